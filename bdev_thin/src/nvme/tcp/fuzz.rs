//! The parser fed arbitrary bytes (proptest; bounded case counts keep CI short).

use super::*;
use proptest::prelude::*;

fn rules(role_host: bool, initialized: bool, dgst: u8, alignment: u8) -> ReceiveRules {
    ReceiveRules {
        role: if role_host { Role::Host } else { Role::Target },
        initialized,
        digests: Digests::from_byte(dgst),
        data_alignment: alignment,
        capsule_data_max: 8192,
        data_pdu_max: 131072,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn arbitrary_headers_frame_consistently_and_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 8..160),
        role_host: bool,
        initialized: bool,
        dgst in 0u8..4,
        alignment in 0u8..32,
    ) {
        let mut raw = [0u8; COMMON_HEADER_BYTES];
        raw.copy_from_slice(&bytes[..8]);
        let common = CommonHeader::decode(&raw);
        let rules = rules(role_host, initialized, dgst, alignment);
        if let Ok(framing) = frame(&common, &rules) {
            prop_assert_eq!(framing.total_bytes(), common.plen as usize);
            prop_assert!(framing.header_bytes <= RECEIVED_HEADER_BYTES_MAX);
            prop_assert!(framing.header_bytes >= usize::from(common.hlen));
            let hlen = usize::from(common.hlen);
            if bytes.len() >= framing.header_bytes {
                let _ = check_header_digest(&bytes[..framing.header_bytes], hlen);
                let _ = decode(&bytes[..hlen], &framing);
            }
        }
    }

    #[test]
    fn one_corrupted_byte_of_a_valid_header_never_panics(
        cid in any::<u16>(),
        length in 1u32..8192,
        dgst in 0u8..4,
        at in 0usize..80,
        value in any::<u8>(),
    ) {
        let encoder = Encoder { digests: Digests::from_byte(dgst), data_alignment: 0 };
        let mut command = Command::new(0x01, cid);
        command.sgl = crate::nvme::command::SglDescriptor::in_capsule(length);
        let mut bytes = encoder.capsule_cmd(&command, length).as_bytes().to_vec();
        let at = at % bytes.len();
        bytes[at] = value;
        let mut raw = [0u8; COMMON_HEADER_BYTES];
        raw.copy_from_slice(&bytes[..8]);
        let common = CommonHeader::decode(&raw);
        if let Ok(framing) = frame(&common, &rules(false, true, dgst, 0)) {
            let hlen = usize::from(common.hlen);
            if bytes.len() >= framing.header_bytes {
                let _ = check_header_digest(&bytes[..framing.header_bytes], hlen);
                let _ = decode(&bytes[..hlen], &framing);
            }
        }
    }

    #[test]
    fn encoded_data_headers_decode_back(
        cccid in any::<u16>(),
        ttag in any::<u16>(),
        offset in any::<u32>(),
        length in 1u32..131072,
        last: bool,
        dgst in 0u8..4,
        alignment in 0u8..32,
    ) {
        let encoder = Encoder { digests: Digests::from_byte(dgst), data_alignment: alignment };
        let header = DataHeader { cccid, ttag, offset, length, last, success: false };
        let encoded = encoder.h2c_data(&header);
        let bytes = encoded.as_bytes();
        let mut raw = [0u8; COMMON_HEADER_BYTES];
        raw.copy_from_slice(&bytes[..8]);
        let framing = frame(&CommonHeader::decode(&raw), &rules(false, true, dgst, alignment));
        let framing = framing.map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(framing.header_bytes + framing.pad_bytes, bytes.len());
        prop_assert_eq!(framing.data_bytes, length as usize);
        let hlen = usize::from(bytes[2]);
        if encoder.digests.header {
            prop_assert!(check_header_digest(bytes, hlen).is_ok());
        }
        prop_assert_eq!(decode(&bytes[..hlen], &framing), Ok(Pdu::H2cData(header)));
    }
}
