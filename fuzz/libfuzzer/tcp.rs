#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mtcp_fuzz::tcp(data));
