//! A storm archive file as `ArchiveReader` reads it (`floodcmd replay`, `archive info`). The
//! first byte picks the layer: even, the rest is the decompressed text (header line, then
//! reading lines) and is gzipped here; odd, the rest is the file's bytes as they are (the
//! gzip layer fuzzed too). Either the readings come out, or one error that names the file and
//! ends the iteration.
#![no_main]

use flate2::write::GzEncoder;
use floodcmd_archive::ArchiveReader;
// The allocation limits (`LimitedAlloc`) are in the shared crate.
use floodcmd_fuzz as _;
use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

fn path() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        // /dev/shm when there is one: one file write per input.
        let dir = ["/dev/shm", "/tmp"]
            .iter()
            .map(PathBuf::from)
            .find(|d| d.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        dir.join(format!(
            "floodcmd-fuzz-archive-{}.ndjson.gz",
            std::process::id()
        ))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&layer, rest)) = data.split_first() else {
        return;
    };
    let bytes = if layer % 2 == 0 {
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(rest).unwrap();
        gz.finish().unwrap()
    } else {
        rest.to_vec()
    };
    std::fs::write(path(), &bytes).unwrap();
    let opened = ArchiveReader::open(path());
    // The reader holds the file open; the name can go now (nothing is left behind).
    let _ = std::fs::remove_file(path());
    let Ok((header, reader)) = opened else {
        return;
    };
    let _ = header.district();
    let mut ok = 0u64;
    let mut errors = 0;
    for item in reader {
        match item {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(e.to_string().contains(&*path().to_string_lossy()), "{e}");
                errors += 1;
            }
        }
    }
    assert!(errors <= 1, "the iteration ends at the first error");
    if errors == 0 {
        assert_eq!(ok, header.readings);
    }
});
