//! The configuration parser, with every module's sections: arbitrary TOML is accepted or refused with an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = rookery_core::Config::from_toml(
        text,
        std::path::Path::new("fuzz.toml"),
        std::path::Path::new("/"),
        &rookery_modules::registry(),
    );
});
