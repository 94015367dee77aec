//! Fixed-size frames carried from the capture thread to the audio thread.
//!
//! A pool of [`QUEUE_FRAMES`] boxed frames is allocated at start and then
//! circulates between two lock-free SPSC queues: `filled` (capture → audio)
//! and `free` (audio → capture). Only pointers move through the queues, so
//! they stay small, and no frame is ever allocated or freed after start.
//! An empty `free` queue means the audio thread is [`QUEUE_FRAMES`] frames
//! behind: a live source then drops (and counts) the period's audio.

use heapless::spsc::{Consumer, Producer, Queue};

/// Samples (not sample frames) in one [`Frame`]: 1024 is 10.7 ms of 48 kHz
/// stereo, 64 ms of 16 kHz mono.
pub const FRAME_SAMPLES: usize = 1024;

/// Frames in the pool: 2.7 s of 48 kHz stereo, 16 s of 16 kHz mono, 1 MiB.
pub const QUEUE_FRAMES: usize = 255;

/// Queue slots (heapless keeps one slot empty).
const SLOTS: usize = QUEUE_FRAMES + 1;

/// Interleaved `f32` samples at the device's rate and channel count.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    pub samples: heapless::Vec<f32, FRAME_SAMPLES>,
}

/// A frame in flight; boxed so queues move a pointer, not 4 KiB.
pub type FrameBox = Box<Frame>;

/// The two queues and the frames circulating between them.
#[derive(Debug)]
pub struct FrameQueues {
    filled: Queue<FrameBox, SLOTS>,
    free: Queue<FrameBox, SLOTS>,
}

/// The capture thread's ends: fill frames taken from `free` into `filled`.
pub struct CaptureEnds<'a> {
    pub filled: Producer<'a, FrameBox>,
    pub free: Consumer<'a, FrameBox>,
}

/// The audio thread's ends: take from `filled`, give back to `free`.
pub struct AudioEnds<'a> {
    pub filled: Consumer<'a, FrameBox>,
    pub free: Producer<'a, FrameBox>,
}

impl Default for FrameQueues {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameQueues {
    /// Allocate the pool; every frame starts in `free`.
    pub fn new() -> Self {
        let mut free = Queue::new();
        for _ in 0..QUEUE_FRAMES {
            // Cannot fail: the queue has room for exactly QUEUE_FRAMES.
            let _ = free.enqueue(Box::default());
        }
        Self {
            filled: Queue::new(),
            free,
        }
    }

    /// Frames waiting for the audio thread.
    pub fn filled_len(&self) -> usize {
        self.filled.len()
    }

    pub fn split(&mut self) -> (CaptureEnds<'_>, AudioEnds<'_>) {
        let (fp, fc) = self.filled.split();
        let (rp, rc) = self.free.split();
        (
            CaptureEnds {
                filled: fp,
                free: rc,
            },
            AudioEnds {
                filled: fc,
                free: rp,
            },
        )
    }
}
