//! What `bdev_nvme_attach_controller` asks for, checked once: the transport address, the NQNs,
//! digests, queue count, and the reconnect policy (SPDK's three timeouts and their rules).
//! Control plane only; the controller keeps the checked value for its life and for saving.

use std::net::{IpAddr, SocketAddr};

use crate::nvme::tcp::Digests;
use crate::nvme::{DISCOVERY_NQN, NQN_BYTES_MAX};

/// SPDK's default NVMe/TCP service ID.
pub const DEFAULT_TRSVCID: &str = "4420";

/// How a controller behaves when its connection is lost (SPDK's `bdev_nvme` options):
/// reconnect every `reconnect_delay_sec`; fail IO once `fast_io_fail_timeout_sec` passed (0:
/// queue it until the controller is back or gone); give up and hot-remove the namespaces once
/// `ctrlr_loss_timeout_sec` passed (-1: never; 0: one immediate reconnect, then the
/// controller stays failed and IO fails).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReconnectPolicy {
    pub ctrlr_loss_timeout_sec: i32,
    pub reconnect_delay_sec: u32,
    pub fast_io_fail_timeout_sec: u32,
}

impl ReconnectPolicy {
    /// SPDK's rules (`bdev_nvme_check_io_error_resiliency_params`), with its messages.
    pub fn check(&self) -> Result<(), String> {
        let (loss, delay, fail) =
            (self.ctrlr_loss_timeout_sec, self.reconnect_delay_sec, self.fast_io_fail_timeout_sec);
        if loss < -1 {
            return Err("ctrlr_loss_timeout_sec: can't be less than -1".into());
        }
        if loss == 0 {
            if delay != 0 || fail != 0 {
                return Err("reconnect_delay_sec, fast_io_fail_timeout_sec: both must be 0 if \
                            ctrlr_loss_timeout_sec is 0"
                    .into());
            }
            return Ok(());
        }
        if delay == 0 {
            return Err("reconnect_delay_sec: can't be 0 if ctrlr_loss_timeout_sec is not 0".into());
        }
        if loss > 0 && delay > loss as u32 {
            return Err("reconnect_delay_sec: can't be more than ctrlr_loss_timeout_sec".into());
        }
        if fail != 0 && fail < delay {
            return Err("fast_io_fail_timeout_sec: can't be less than reconnect_delay_sec".into());
        }
        if loss > 0 && fail > loss as u32 {
            return Err(
                "fast_io_fail_timeout_sec: can't be more than ctrlr_loss_timeout_sec".into()
            );
        }
        Ok(())
    }
}

/// A checked attach request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachOptions {
    /// The controller's name; its bdevs are `{name}n{nsid}`.
    pub name: String,
    /// "IPv4" or "IPv6" as given (SPDK accepts any case).
    pub adrfam: String,
    pub traddr: String,
    pub trsvcid: String,
    pub address: SocketAddr,
    pub subnqn: String,
    pub hostnqn: String,
    /// The host identifier sent at Connect (from the host NQN's UUID, when it has one).
    pub host_id: [u8; 16],
    pub digests: Digests,
    /// IO queues to ask for; at most one per reactor core is used.
    pub num_io_queues: u32,
    pub reconnect: ReconnectPolicy,
    /// Deadline of the TCP connect, ICReq and Fabrics Connect, in microseconds.
    pub connect_timeout_us: u64,
    /// The value given, saved back as given (0 when none was).
    pub fabrics_connect_timeout_us: u64,
    /// Connect CATTR bit 2 clear (the default): the controller reports SQHD and we honour it.
    pub sq_flow_control: bool,
    /// Saved back as given; a source address is not bound.
    pub hostaddr: Option<String>,
    pub hostsvcid: Option<String>,
    pub multipath: Option<String>,
}

/// Why an attach request is refused: the parameter and what was wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OptionsError(pub String);

impl AttachOptions {
    /// The socket address of `traddr`:`trsvcid`, checked against `adrfam`.
    pub fn resolve(adrfam: &str, traddr: &str, trsvcid: &str) -> Result<SocketAddr, OptionsError> {
        let ip: IpAddr = traddr.parse().map_err(|_| {
            OptionsError(format!(
                "traddr: '{traddr}' is not an IP address (names are not resolved)"
            ))
        })?;
        let port: u16 = trsvcid
            .parse()
            .map_err(|_| OptionsError(format!("trsvcid: '{trsvcid}' is not a TCP port")))?;
        let family_ok = match adrfam.to_ascii_lowercase().as_str() {
            "ipv4" => ip.is_ipv4(),
            "ipv6" => ip.is_ipv6(),
            _ => {
                return Err(OptionsError(format!(
                    "adrfam: '{adrfam}' is not an address family of NVMe/TCP (IPv4, IPv6)"
                )));
            }
        };
        if !family_ok {
            return Err(OptionsError(format!("traddr: {traddr} is not an {adrfam} address")));
        }
        Ok(SocketAddr::new(ip, port))
    }

    /// Checks an NQN's length and its `nqn.` prefix.
    pub fn check_nqn(key: &str, nqn: &str) -> Result<(), OptionsError> {
        if nqn.is_empty() || nqn.len() > NQN_BYTES_MAX || !nqn.starts_with("nqn.") {
            return Err(OptionsError(format!("{key}: '{nqn}' is not a valid NQN")));
        }
        if nqn == DISCOVERY_NQN && key == "subnqn" {
            return Err(OptionsError(
                "subnqn: the discovery subsystem has no namespaces to attach".into(),
            ));
        }
        Ok(())
    }

    /// A host NQN of the UUID form and the host identifier that goes with it, as
    /// `nvme gen-hostnqn` and SPDK make them.
    pub fn generated_host() -> (String, [u8; 16]) {
        let uuid = uuid::Uuid::new_v4();
        (format!("nqn.2014-08.org.nvmexpress:uuid:{uuid}"), *uuid.as_bytes())
    }

    /// The host identifier for `hostnqn`: its UUID if it is of the UUID form, else a fresh
    /// one.
    pub fn host_id_for(hostnqn: &str) -> [u8; 16] {
        hostnqn
            .rsplit_once(":uuid:")
            .and_then(|(_, uuid)| uuid::Uuid::parse_str(uuid).ok())
            .unwrap_or_else(uuid::Uuid::new_v4)
            .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(loss: i32, delay: u32, fail: u32) -> ReconnectPolicy {
        ReconnectPolicy {
            ctrlr_loss_timeout_sec: loss,
            reconnect_delay_sec: delay,
            fast_io_fail_timeout_sec: fail,
        }
    }

    #[test]
    fn reconnect_rules_follow_spdk() {
        assert!(policy(0, 0, 0).check().is_ok());
        assert!(policy(0, 1, 0).check().is_err());
        assert!(policy(0, 0, 1).check().is_err());
        assert!(policy(-2, 1, 0).check().is_err());
        assert!(policy(-1, 0, 0).check().is_err());
        assert!(policy(-1, 2, 0).check().is_ok());
        assert!(policy(-1, 2, 1).check().is_err(), "fast io fail before the first reconnect");
        assert!(policy(10, 2, 5).check().is_ok());
        assert!(policy(10, 11, 0).check().is_err());
        assert!(policy(10, 2, 11).check().is_err());
        assert!(policy(10, 3, 2).check().is_err());
    }

    #[test]
    fn addresses_and_nqns() {
        let address = AttachOptions::resolve("IPv4", "127.0.0.1", "4420").unwrap();
        assert_eq!(address, "127.0.0.1:4420".parse().unwrap());
        assert!(AttachOptions::resolve("ipv6", "::1", "4420").is_ok());
        assert!(AttachOptions::resolve("IPv6", "127.0.0.1", "4420").is_err());
        assert!(AttachOptions::resolve("IPv4", "localhost", "4420").is_err());
        assert!(AttachOptions::resolve("IPv4", "127.0.0.1", "x").is_err());
        assert!(AttachOptions::resolve("IB", "127.0.0.1", "4420").is_err());
        assert!(AttachOptions::check_nqn("subnqn", "nqn.2016-06.io.spdk:cnode1").is_ok());
        assert!(AttachOptions::check_nqn("subnqn", "cnode1").is_err());
        assert!(AttachOptions::check_nqn("subnqn", DISCOVERY_NQN).is_err());
        let (nqn, id) = AttachOptions::generated_host();
        assert_eq!(AttachOptions::host_id_for(&nqn), id);
    }
}
