//! `framework_get_subsystems` and `framework_get_config`: what SPDK's client needs for
//! `save_config` (which it implements itself). Each subsystem contributes its config entries
//! through one function in [`SUBSYSTEMS`]; a subsystem depends only on subsystems listed
//! before it, since the client expands `depends_on` in list order. Control plane, any core.
//!
//! What is saved is what replays: create calls of base bdevs with the keys SPDK's own
//! `write_config_json` writes, so a saved config also loads into a real `spdk_tgt`. Thin pools
//! and volumes are not saved as calls: they come back by examine when their bdevs do.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Reply, reply_with};
use crate::rpc::RpcError;
use crate::rpc::params::Params;
use crate::target::Target;

/// One subsystem as `framework_get_subsystems` lists it.
pub struct Subsystem {
    pub name: &'static str,
    pub depends_on: &'static [&'static str],
    /// The calls that recreate its state, in order; `None` saves as `"config": null`.
    pub config: fn(&Arc<Target>) -> Option<Vec<Value>>,
}

/// Every subsystem, in init order.
pub static SUBSYSTEMS: &[Subsystem] = &[
    Subsystem { name: "bdev", depends_on: &[], config: super::bdev::subsystem_config },
    Subsystem { name: "nbd", depends_on: &["bdev"], config: nbd_config },
    Subsystem { name: "nvmf", depends_on: &["bdev"], config: nvmf_config },
];

fn nvmf_config(target: &Arc<Target>) -> Option<Vec<Value>> {
    let entries = super::nvmf::config_entries(target);
    if entries.is_empty() { None } else { Some(entries) }
}

fn nbd_config(target: &Arc<Target>) -> Option<Vec<Value>> {
    Some(super::nbd::config_entries(target))
}

pub(super) fn get_subsystems(_target: &Arc<Target>, params: Params, reply: Reply) {
    reply_with(reply, || {
        params.finish()?;
        Ok(Value::Array(
            SUBSYSTEMS
                .iter()
                .map(|s| json!({"subsystem": s.name, "depends_on": s.depends_on}))
                .collect(),
        ))
    })
}

pub(super) fn get_config(target: &Arc<Target>, mut params: Params, reply: Reply) {
    reply_with(reply, || {
        let name = params.string("name")?;
        // We never write batches, so both answers are the flat list.
        params.optional_bool("with_batches")?;
        params.finish()?;
        let subsystem = SUBSYSTEMS
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| RpcError::invalid_params(format!("Subsystem '{name}' not found")))?;
        Ok((subsystem.config)(target).map_or(Value::Null, Value::Array))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_come_first() {
        for (index, subsystem) in SUBSYSTEMS.iter().enumerate() {
            for dependency in subsystem.depends_on {
                assert!(
                    SUBSYSTEMS[..index].iter().any(|s| s.name == *dependency),
                    "{} depends on {dependency}, listed later or not at all",
                    subsystem.name
                );
            }
        }
    }
}
