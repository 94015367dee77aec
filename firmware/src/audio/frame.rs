//! Fixed-size frames carried from the capture thread to the audio thread.

/// Samples (not sample frames) in one [`Frame`]: 1024 is 10.7 ms of 48 kHz
/// stereo, 64 ms of 16 kHz mono.
pub const FRAME_SAMPLES: usize = 1024;

/// Slots in the capture→audio queue (heapless keeps one free, so it holds
/// `QUEUE_SLOTS - 1` frames): 2.7 s of 48 kHz stereo, 16 s of 16 kHz mono.
/// About 1 MiB, allocated once at start.
pub const QUEUE_SLOTS: usize = 256;

/// Interleaved `f32` samples at the device's rate and channel count.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    pub samples: heapless::Vec<f32, FRAME_SAMPLES>,
}

/// The lock-free single-producer single-consumer queue between the threads.
pub type FrameQueue = heapless::spsc::Queue<Frame, QUEUE_SLOTS>;
pub type FrameProducer<'a> = heapless::spsc::Producer<'a, Frame>;
pub type FrameConsumer<'a> = heapless::spsc::Consumer<'a, Frame>;
