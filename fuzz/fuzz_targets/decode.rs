//! Feed arbitrary bytes to the 9P decoders; anything that decodes must re-encode to the
//! same bytes (see `envoy_protocol::fuzzing::decode`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| envoy_protocol::fuzzing::decode(data));
