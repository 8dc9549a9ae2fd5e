//! The codec's layouts and checks, by offset.

use super::*;
use crate::nvme::command::{SglDescriptor, Status};

fn target_rules() -> ReceiveRules {
    ReceiveRules {
        role: Role::Target,
        initialized: true,
        digests: Digests::default(),
        data_alignment: 0,
        capsule_data_max: 8192,
        data_pdu_max: 131072,
    }
}

fn common(bytes: &[u8]) -> CommonHeader {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[..8]);
    CommonHeader::decode(&raw)
}

#[test]
fn crc32c_is_castagnoli() {
    assert_eq!(digest(b"123456789"), 0xE306_9283);
    assert_eq!(digest_append(digest(b"1234"), b"56789"), 0xE306_9283);
}

#[test]
fn ic_req_matches_what_linux_sends() {
    // reference/qemu-nvme.md: the kernel's ICReq, 128 bytes.
    let bytes = Encoder::ic_req(&IcReq::default());
    let mut expected = [0u8; 128];
    expected[..8].copy_from_slice(&[0x00, 0x00, 0x80, 0x00, 0x80, 0x00, 0x00, 0x00]);
    assert_eq!(bytes.as_bytes(), &expected[..]);
    let rules = ReceiveRules { initialized: false, ..target_rules() };
    let framing = frame(&common(bytes.as_bytes()), &rules).unwrap();
    assert_eq!(framing.header_bytes, 128);
    assert_eq!(decode(bytes.as_bytes(), &framing), Ok(Pdu::IcReq(IcReq::default())));
}

#[test]
fn ic_resp_layout() {
    let response = IcResp {
        pfv: 0,
        cpda: 0,
        digests: Digests { header: true, data: false },
        maxh2cdata: 0x40_0000,
    };
    let bytes = Encoder::ic_resp(&response);
    let b = bytes.as_bytes();
    assert_eq!(&b[..8], &[0x01, 0x00, 0x80, 0x00, 0x80, 0, 0, 0], "type 1, hlen/plen 128");
    assert_eq!((b[8], b[10], b[11]), (0, 0, 1), "pfv @8, cpda @10, dgst @11");
    assert_eq!(&b[12..16], &[0, 0, 0x40, 0], "maxh2cdata @12");
    let rules = ReceiveRules { role: Role::Host, initialized: false, ..target_rules() };
    let framing = frame(&common(b), &rules).unwrap();
    assert_eq!(decode(b, &framing), Ok(Pdu::IcResp(response)));
}

#[test]
fn capsule_with_in_capsule_data_and_digests() {
    let mut command = Command::new(0x01, 7);
    command.sgl = SglDescriptor::in_capsule(512);
    let encoder = Encoder { digests: Digests { header: true, data: true }, data_alignment: 0 };
    let header = encoder.capsule_cmd(&command, 512);
    let b = header.as_bytes();
    assert_eq!(b[0], 0x04);
    assert_eq!(b[1], flags::HDGSTF | flags::DDGSTF);
    assert_eq!(b[2], 72, "hlen");
    assert_eq!(b[3], 76, "pdo: after the header digest");
    assert_eq!(get_u32(b, 4), 72 + 4 + 512 + 4, "plen");
    assert_eq!(b.len(), 76);
    assert_eq!(get_u32(b, 72), digest(&b[..72]), "header digest follows the header");
    let rules = ReceiveRules { digests: encoder.digests, ..target_rules() };
    let framing = frame(&common(b), &rules).unwrap();
    assert_eq!(
        framing,
        Framing { header_bytes: 76, pad_bytes: 0, data_bytes: 512, data_digest: true }
    );
    check_header_digest(b, 72).unwrap();
    let mut corrupt = b.to_vec();
    corrupt[20] ^= 1;
    assert_eq!(check_header_digest(&corrupt, 72), Err(PduError::header_digest()));
    assert_eq!(decode(&b[..72], &framing), Ok(Pdu::CapsuleCmd(command)));
}

#[test]
fn data_pdus_and_r2t_layout() {
    let encoder = Encoder::default();
    let data =
        DataHeader { cccid: 5, ttag: 9, offset: 4096, length: 8192, last: true, success: false };
    let h2c = encoder.h2c_data(&data);
    let b = h2c.as_bytes();
    assert_eq!(&b[..4], &[0x06, flags::LAST_PDU, 24, 24], "type, flags, hlen, pdo");
    assert_eq!(get_u32(b, 4), 24 + 8192);
    assert_eq!((get_u16(b, 8), get_u16(b, 10)), (5, 9), "cccid @8, ttag @10");
    assert_eq!((get_u32(b, 12), get_u32(b, 16)), (4096, 8192), "datao @12, datal @16");
    let framing = frame(&common(b), &target_rules()).unwrap();
    assert_eq!(framing.data_bytes, 8192);
    assert_eq!(decode(b, &framing), Ok(Pdu::H2cData(data)));

    let aligned = Encoder { digests: Digests::default(), data_alignment: 7 };
    let c2h = aligned.c2h_data(&DataHeader { success: true, ..data });
    let b = c2h.as_bytes();
    assert_eq!(b[1], flags::LAST_PDU | flags::SUCCESS);
    assert_eq!(b[3], 32, "pdo rounded up to HPDA (8 dwords)");
    assert_eq!(get_u16(b, 10), 0, "no transfer tag in C2HData");
    assert_eq!(b.len(), 32, "header plus padding");
    let host = ReceiveRules { role: Role::Host, data_alignment: 7, ..target_rules() };
    let framing = frame(&common(b), &host).unwrap();
    assert_eq!((framing.pad_bytes, framing.data_bytes), (8, 8192));

    let r2t = R2t { cccid: 3, ttag: 4, offset: 0, length: 65536 };
    let header = encoder.r2t(&r2t);
    let b = header.as_bytes();
    assert_eq!(&b[..8], &[0x09, 0, 24, 0, 24, 0, 0, 0]);
    assert_eq!((get_u16(b, 8), get_u16(b, 10), get_u32(b, 16)), (3, 4, 65536));
    let framing = frame(&common(b), &host).unwrap();
    assert_eq!(decode(b, &framing), Ok(Pdu::R2t(r2t)));

    let response = Completion { cid: 3, status: Status::INVALID_FIELD, ..Completion::default() };
    let header = encoder.capsule_resp(&response);
    assert_eq!(&header.as_bytes()[..4], &[0x05, 0, 24, 0]);
    let framing = frame(&common(header.as_bytes()), &host).unwrap();
    assert_eq!(decode(header.as_bytes(), &framing), Ok(Pdu::CapsuleResp(response)));
}

#[test]
fn term_req_carries_the_bad_header() {
    let bad = [0xAAu8; 200];
    let header = Encoder::term_req(false, PduError::invalid_field(field::PLEN), &bad);
    let b = header.as_bytes();
    assert_eq!(&b[..4], &[0x03, 0, 24, 0], "C2HTermReq, hlen 24, no pdo");
    assert_eq!(get_u32(b, 4), 24 + 128, "plen: header and 128 bytes of the bad one");
    assert_eq!((get_u16(b, 8), get_u32(b, 10)), (1, 4), "fes @8, fei @10");
    assert_eq!(&b[24..], &bad[..128]);
    let digest_error = Encoder::term_req(false, PduError::header_digest(), &bad[..72]);
    assert_eq!(get_u32(digest_error.as_bytes(), 10), 0, "fei only for field errors");
    let host = ReceiveRules { role: Role::Host, ..target_rules() };
    let framing = frame(&common(b), &host).unwrap();
    assert_eq!(framing.data_bytes, 128);
    assert_eq!(decode(b, &framing), Ok(Pdu::TermReq { from_host: false, fes: 1, fei: 4 }));
}

#[test]
fn framing_errors_name_fes_and_field() {
    let rules = target_rules();
    let capsule = |hlen: u8, pdo: u8, plen: u32| CommonHeader {
        pdu_type: pdu_type::CAPSULE_CMD,
        flags: 0,
        hlen,
        pdo,
        plen,
    };
    let error = |h: CommonHeader, r: &ReceiveRules| frame(&h, r).unwrap_err();
    assert_eq!(error(capsule(71, 0, 72), &rules), PduError::invalid_field(field::HLEN));
    assert_eq!(error(capsule(72, 0, 40), &rules), PduError::invalid_field(field::PLEN));
    assert_eq!(error(capsule(72, 72, 72 + 8193), &rules), PduError::invalid_field(field::PLEN));
    assert_eq!(error(capsule(72, 10, 100), &rules), PduError::invalid_field(field::PDO));
    let unknown = CommonHeader { pdu_type: 0x0F, ..capsule(72, 0, 72) };
    assert_eq!(error(unknown, &rules), PduError::invalid_field(field::PDU_TYPE));
    let c2h = CommonHeader { pdu_type: pdu_type::C2H_DATA, ..capsule(24, 0, 24) };
    assert_eq!(error(c2h, &rules), PduError::invalid_field(field::PDU_TYPE));
    let fresh = ReceiveRules { initialized: false, ..rules };
    assert_eq!(error(capsule(72, 0, 72), &fresh), PduError::sequence());
    let ic = CommonHeader { pdu_type: pdu_type::IC_REQ, ..capsule(128, 0, 128) };
    assert_eq!(error(ic, &rules), PduError::sequence(), "a second ICReq");
    let digest_flag = CommonHeader { flags: flags::HDGSTF, ..capsule(72, 0, 76) };
    assert_eq!(error(digest_flag, &rules), PduError::invalid_field(field::FLAGS));
    let h2c = CommonHeader { pdu_type: pdu_type::H2C_DATA, ..capsule(24, 24, 24 + 131073) };
    assert_eq!(error(h2c, &rules), PduError::invalid_field(field::PLEN));
    let ok = frame(&capsule(72, 0, 72), &rules).unwrap();
    assert_eq!(ok, Framing { header_bytes: 72, ..Framing::default() });
}

#[test]
fn data_length_must_match_the_framing() {
    let encoder = Encoder::default();
    let data =
        DataHeader { cccid: 1, ttag: 1, offset: 0, length: 4096, last: true, success: false };
    let mut bytes = encoder.h2c_data(&data).as_bytes().to_vec();
    put_u32(&mut bytes, 16, 4000);
    let framing = frame(&common(&bytes), &target_rules()).unwrap();
    assert_eq!(decode(&bytes, &framing), Err(PduError::invalid_field(field::DATA_DATAL)));
}
