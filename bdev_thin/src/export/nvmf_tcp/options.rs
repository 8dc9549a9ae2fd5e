//! The TCP transport's options (`nvmf_create_transport`), with SPDK's names, defaults and
//! meaning, and what they make the controllers advertise (MDTS, IOCCSZ, CAP.MQES, KAS).
//! Control plane: set once per target, read at connection set-up.

use crate::limits;
use crate::nvme::tcp::DIGEST_BYTES;

/// SPDK's TCP transport defaults (`nvmf_create_transport -t TCP` with nothing else).
pub const DEFAULT_MAX_QUEUE_DEPTH: u32 = 128;
pub const DEFAULT_MAX_IO_QPAIRS_PER_CTRLR: u32 = 127;
pub const DEFAULT_IN_CAPSULE_DATA_SIZE: u32 = 4096;
pub const DEFAULT_MAX_IO_SIZE: u32 = 131072;
pub const DEFAULT_IO_UNIT_SIZE: u32 = 131072;
pub const DEFAULT_MAX_AQ_DEPTH: u32 = 128;
pub const DEFAULT_KAS: u32 = 100;
pub const DEFAULT_MIN_KATO_MS: u32 = 10_000;
pub const DEFAULT_ABORT_TIMEOUT_SEC: u32 = 1;

/// The options of the one TCP transport a target has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportOptions {
    /// IO queue entries (CAP.MQES + 1); also the command slots of each IO connection.
    pub max_queue_depth: u32,
    pub max_io_qpairs_per_ctrlr: u32,
    /// In-capsule data of IO queues, bytes (IOCCSZ = 4 + this / 16).
    pub in_capsule_data_size: u32,
    /// Largest transfer of one command, bytes (MDTS), and MAXH2CDATA.
    pub max_io_size: u32,
    /// Accepted and saved; no effect here (nor in SPDK's TCP transport).
    pub io_unit_size: u32,
    pub max_aq_depth: u32,
    /// C2HData may carry SUCCESS when the host disabled SQ flow control.
    pub c2h_success: bool,
    /// Keep alive granularity in 100 ms units (KAS; 0: no keep alive).
    pub kas: u32,
    /// Shortest keep alive timeout a host gets, milliseconds.
    pub min_kato_ms: u32,
    /// Saved as given: SPDK's knobs for its own buffer pools, sockets and aborts.
    pub sock_priority: u32,
    pub abort_timeout_sec: u32,
    pub iobuf_small_cache_size: u32,
    pub iobuf_large_cache_size: u32,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            max_queue_depth: DEFAULT_MAX_QUEUE_DEPTH,
            max_io_qpairs_per_ctrlr: DEFAULT_MAX_IO_QPAIRS_PER_CTRLR,
            in_capsule_data_size: DEFAULT_IN_CAPSULE_DATA_SIZE,
            max_io_size: DEFAULT_MAX_IO_SIZE,
            io_unit_size: DEFAULT_IO_UNIT_SIZE,
            max_aq_depth: DEFAULT_MAX_AQ_DEPTH,
            c2h_success: true,
            kas: DEFAULT_KAS,
            min_kato_ms: DEFAULT_MIN_KATO_MS,
            sock_priority: 0,
            abort_timeout_sec: DEFAULT_ABORT_TIMEOUT_SEC,
            iobuf_small_cache_size: u32::MAX,
            iobuf_large_cache_size: u32::MAX,
        }
    }
}

/// A transport option out of the range we serve: the parameter and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{parameter}: {reason}")]
pub struct OptionError {
    pub parameter: &'static str,
    pub reason: String,
}

fn refuse(parameter: &'static str, reason: String) -> Result<(), OptionError> {
    Err(OptionError { parameter, reason })
}

impl TransportOptions {
    pub fn validate(&self) -> Result<(), OptionError> {
        let depth_max = limits::NVMF_QUEUE_DEPTH_MAX as u32;
        for (parameter, depth) in
            [("max_queue_depth", self.max_queue_depth), ("max_aq_depth", self.max_aq_depth)]
        {
            if !(2..=depth_max).contains(&depth) {
                return refuse(parameter, format!("must be 2 to {depth_max}"));
            }
        }
        if self.max_io_qpairs_per_ctrlr == 0 || self.max_io_qpairs_per_ctrlr > 0xFFFE {
            return refuse("max_io_qpairs_per_ctrlr", "must be 1 to 65534".into());
        }
        let icd_max = limits::NVMF_IN_CAPSULE_DATA_BYTES_MAX as u32;
        if !self.in_capsule_data_size.is_multiple_of(16) || self.in_capsule_data_size > icd_max {
            return refuse(
                "in_capsule_data_size",
                format!("must be a multiple of 16 up to {icd_max}"),
            );
        }
        let io_max = limits::IO_BYTES_MAX as u32;
        if self.max_io_size < 4096
            || !self.max_io_size.is_multiple_of(4096)
            || self.max_io_size > io_max
        {
            return refuse(
                "max_io_size",
                format!("must be a multiple of 4096 from 4096 to {io_max}"),
            );
        }
        if self.kas > u32::from(u16::MAX) {
            return refuse("kas", "must fit 16 bits (100 ms units)".into());
        }
        Ok(())
    }

    /// MDTS: the transfer limit as a power of two of 4 KiB pages (rounded down).
    pub fn mdts(&self) -> u8 {
        (self.max_io_size / 4096).max(1).ilog2() as u8
    }

    /// The largest transfer one command may ask for: what MDTS advertises.
    pub fn transfer_bytes_max(&self) -> u32 {
        4096 << self.mdts()
    }

    /// IOCCSZ: the IO command capsule in 16-byte units (the 64-byte SQE and in-capsule data).
    pub fn ioccsz(&self) -> u32 {
        (64 + self.in_capsule_data_size) / 16
    }

    /// In-capsule data a queue accepts: the admin queue and fabrics commands always 8 KiB.
    pub fn capsule_data_max(&self, admin: bool) -> u32 {
        if admin {
            self.in_capsule_data_size.max(limits::NVMF_ADMIN_IN_CAPSULE_DATA_BYTES as u32)
        } else {
            self.in_capsule_data_size
        }
    }

    /// The data buffer of one connection: every slot's largest transfer, capped, but never
    /// less than one largest transfer and one largest capsule.
    pub fn connection_buffer_bytes(&self) -> usize {
        let depth = self.max_queue_depth.max(self.max_aq_depth) as usize;
        let largest = self.transfer_bytes_max() as usize
            + self.capsule_data_max(true) as usize
            + DIGEST_BYTES;
        (depth * self.transfer_bytes_max() as usize)
            .min(limits::NVMF_QPAIR_BUFFER_BYTES_MAX)
            .max(largest.next_multiple_of(limits::IO_BUFFER_ALIGN_BYTES))
    }

    /// The keep alive timeout a controller runs with when its host asked for `kato_ms`
    /// (SPDK's rule: at least `min_kato`, rounded up to the KAS granularity; 0 stays 0).
    pub fn effective_kato_ms(&self, kato_ms: u32) -> u32 {
        if self.kas == 0 || kato_ms == 0 {
            return 0;
        }
        if kato_ms <= self.min_kato_ms {
            return self.min_kato_ms;
        }
        let unit = self.kas * 100;
        kato_ms.div_ceil(unit).saturating_mul(unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_advertise_what_spdk_does() {
        let options = TransportOptions::default();
        options.validate().unwrap();
        assert_eq!(options.mdts(), 5, "128 KiB");
        assert_eq!(options.ioccsz(), 260);
        assert_eq!(options.capsule_data_max(true), 8192);
        assert_eq!(options.capsule_data_max(false), 4096);
        assert_eq!(options.connection_buffer_bytes(), 16 << 20);
        assert_eq!(options.effective_kato_ms(5000), 10_000, "raised to min_kato");
        assert_eq!(options.effective_kato_ms(12_345), 20_000, "rounded up to 10 s (KAS 100)");
        assert_eq!(options.effective_kato_ms(0), 0);
        let small = TransportOptions { kas: 1, min_kato_ms: 100, ..options.clone() };
        assert_eq!(small.effective_kato_ms(150), 200);
    }

    #[test]
    fn out_of_range_options_name_themselves() {
        let bad = TransportOptions { max_io_size: 5000, ..TransportOptions::default() };
        assert_eq!(bad.validate().unwrap_err().parameter, "max_io_size");
        let bad = TransportOptions { in_capsule_data_size: 100, ..TransportOptions::default() };
        assert_eq!(bad.validate().unwrap_err().parameter, "in_capsule_data_size");
        let bad = TransportOptions { max_queue_depth: 1, ..TransportOptions::default() };
        assert_eq!(bad.validate().unwrap_err().parameter, "max_queue_depth");
        let odd = TransportOptions { max_io_size: 12288, ..TransportOptions::default() };
        assert_eq!((odd.mdts(), odd.transfer_bytes_max()), (1, 8192));
    }
}
