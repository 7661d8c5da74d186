//! Arbitrary bytes into every decoder a peer's datagram or stream reaches: the envelope with
//! each payload type, and the state broadcast item. None may panic, hang or allocate without
//! bound; whatever decodes must encode again to an envelope that decodes to the same value.
#![no_main]

use edgemesh_gossip::envelope::{decode, encode, peek_kind, MAX_PAYLOAD};
use edgemesh_gossip::state::{Digest, Update};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let _ = peek_kind(data, MAX);
    if let Ok(u) = decode::<Update>(data, data.get(3).copied().unwrap_or(0), MAX) {
        let again = encode(2, &u, MAX_PAYLOAD).expect("a decoded update encodes");
        assert_eq!(decode::<Update>(&again, 2, MAX_PAYLOAD).unwrap(), u);
    }
    let _ = decode::<Digest>(data, data.get(3).copied().unwrap_or(0), MAX);
    let _ = decode::<Vec<u8>>(data, 1, MAX);
});
