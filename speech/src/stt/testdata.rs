//! The built models and the dev clips, for the tests that run models.

use std::path::Path;

/// A 16 kHz mono dev clip as samples.
pub(crate) fn read_clip(path: &Path) -> Vec<f32> {
    let mut r = hound::WavReader::open(path).unwrap();
    let spec = r.spec();
    assert_eq!(
        (spec.sample_rate, spec.channels),
        (16_000, 1),
        "{}",
        path.display()
    );
    match spec.sample_format {
        hound::SampleFormat::Int => {
            let scale = (1i64 << (spec.bits_per_sample - 1)) as f32;
            r.samples::<i32>()
                .map(|x| x.unwrap() as f32 / scale)
                .collect()
        }
        hound::SampleFormat::Float => r.samples::<f32>().map(|x| x.unwrap()).collect(),
    }
}

/// The built models and the dev clips (`$TALKIE_EVAL_DIR/dev`, else
/// `../shared/eval/dev` beside the repository).
pub(crate) fn models_and_dev() -> (std::path::PathBuf, std::path::PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dev = std::env::var_os("TALKIE_EVAL_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/eval"))
        .join("dev");
    (root.join("models/build"), dev)
}
