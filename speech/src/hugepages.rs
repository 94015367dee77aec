//! Transparent huge pages for the large matrices read every decoder step.
//!
//! The vocabulary projection streams its whole int8 matrix (20 MB for
//! Whisper tiny.en) from L3 or DRAM every step. In 4 KB pages that is
//! about 5,000 pages a step, more than the core's second-level TLB holds,
//! so every page costs a table walk; in 2 MB pages it is ten. On the Xeon
//! of docs/performance.md (2 threads, an 8 MB buffer read between steps as
//! a decoder's layers do) the median projection went 0.55–0.60 → 0.44–0.51
//! ms with the matrix in huge pages, the kernels unchanged (0.44–0.46 with
//! the kernels' prefetch as well).
//!
//! Linux backs anonymous memory with huge pages where a mapping asks for
//! them (`madvise(MADV_HUGEPAGE)`) when `/sys/kernel/mm/transparent_hugepage/enabled`
//! is `madvise` (Debian's and Raspberry Pi OS's default) or `always`. The
//! advice must come before the pages are first written: [`I8Buffer`]
//! maps its own memory, advises it, and only then is it filled. Without THP (another OS, a kernel built without it, `never`) nothing
//! changes but the TLB misses: the advice is a hint.

/// The size of a huge page for anonymous memory
/// (`/sys/kernel/mm/transparent_hugepage/hpage_pmd_size`: 2 MB with 4 KB
/// base pages on x86-64 and aarch64, 32 MB with a Pi 5's 16 KB pages);
/// `None` where the kernel has no transparent huge pages.
pub fn page_size() -> Option<usize> {
    static SIZE: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *SIZE.get_or_init(|| {
        let text =
            std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size").ok()?;
        text.trim()
            .parse::<usize>()
            .ok()
            .filter(|s| s.is_power_of_two())
    })
}

/// An int8 matrix's bytes, zeroed at creation, in memory of their own
/// whose whole huge pages are advised `MADV_HUGEPAGE` before anything is
/// written (Linux, at least two huge pages long); on the heap otherwise
/// or when mapping fails. A heap allocation would not do: glibc serves
/// even 20 MB from pages an earlier load already touched, which stay
/// small.
pub struct I8Buffer {
    inner: Inner,
}

enum Inner {
    Heap(Vec<i8>),
    #[cfg(target_os = "linux")]
    Mapped {
        /// The mapping (for `munmap`) and the data: its first huge-page
        /// boundary, `len` bytes.
        base: std::ptr::NonNull<libc::c_void>,
        map_len: usize,
        data: std::ptr::NonNull<i8>,
        len: usize,
        advised: usize,
    },
}

// SAFETY: the mapping is owned by this value alone, like a Vec's buffer.
unsafe impl Send for I8Buffer {}
// SAFETY: shared access only reads (`Deref`); writes need `&mut`.
unsafe impl Sync for I8Buffer {}

impl From<Vec<i8>> for I8Buffer {
    fn from(v: Vec<i8>) -> Self {
        Self {
            inner: Inner::Heap(v),
        }
    }
}

impl I8Buffer {
    /// `len` zero bytes, in advised huge pages where this can be.
    pub fn zeroed(len: usize) -> Self {
        #[cfg(target_os = "linux")]
        if let Some(mapped) = page_size()
            .filter(|&huge| len >= 2 * huge)
            .and_then(|huge| Self::map(len, huge))
        {
            return mapped;
        }
        vec![0; len].into()
    }

    #[cfg(target_os = "linux")]
    fn map(len: usize, huge: usize) -> Option<Self> {
        let map_len = len.checked_add(huge)?;
        // SAFETY: a fresh private anonymous mapping; nothing else refers
        // to it. Its pages read as zeros until written.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let base = std::ptr::NonNull::new(base)?;
        let start = (base.as_ptr() as usize).next_multiple_of(huge);
        let offset = start - base.as_ptr() as usize;
        // Whole huge pages only: a partly used last one would hold up to
        // a huge page of memory for nothing.
        let whole = len - len % huge;
        // SAFETY: [start, start + whole) lies inside the mapping (offset <
        // huge, whole <= len, map_len = len + huge); the advice changes
        // only how the kernel backs those pages.
        let rc = unsafe { libc::madvise(start as *mut libc::c_void, whole, libc::MADV_HUGEPAGE) };
        // SAFETY: `offset < huge` keeps the pointer inside the mapping.
        let data = unsafe { base.cast::<i8>().add(offset) };
        Some(Self {
            inner: Inner::Mapped {
                base,
                map_len,
                data,
                len,
                advised: if rc == 0 { whole } else { 0 },
            },
        })
    }

    /// Bytes advised into huge pages (0 on the heap).
    pub fn advised(&self) -> usize {
        match &self.inner {
            Inner::Heap(_) => 0,
            #[cfg(target_os = "linux")]
            Inner::Mapped { advised, .. } => *advised,
        }
    }
}

impl std::ops::Deref for I8Buffer {
    type Target = [i8];
    fn deref(&self) -> &[i8] {
        match &self.inner {
            Inner::Heap(v) => v,
            // SAFETY: `len` bytes from `data` lie inside the live mapping,
            // initialized (zeros or written through `&mut`).
            #[cfg(target_os = "linux")]
            Inner::Mapped { data, len, .. } => unsafe {
                std::slice::from_raw_parts(data.as_ptr(), *len)
            },
        }
    }
}

impl std::ops::DerefMut for I8Buffer {
    fn deref_mut(&mut self) -> &mut [i8] {
        match &mut self.inner {
            Inner::Heap(v) => v,
            // SAFETY: as in `deref`, and `&mut self` is the only access.
            #[cfg(target_os = "linux")]
            Inner::Mapped { data, len, .. } => unsafe {
                std::slice::from_raw_parts_mut(data.as_ptr(), *len)
            },
        }
    }
}

impl Drop for I8Buffer {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Inner::Mapped { base, map_len, .. } = self.inner {
            // SAFETY: the mapping made in `map`, unmapped once, here.
            unsafe {
                libc::munmap(base.as_ptr(), map_len);
            }
        }
    }
}

impl std::fmt::Debug for I8Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8Buffer")
            .field("len", &self.len())
            .field("advised", &self.advised())
            .finish()
    }
}

/// What `/proc/self/smaps` says of the mappings over a range of memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backing {
    /// Bytes backed by huge pages (`AnonHugePages` of every mapping that
    /// overlaps the range, at most the range's length).
    pub huge_bytes: u64,
    /// Every overlapping mapping that was advised `MADV_HUGEPAGE`
    /// (`VmFlags` has `hg`) and its bytes inside the range.
    pub advised_bytes: u64,
}

/// How `[start, start + len)` is backed, from `/proc/self/smaps`; `None`
/// where that file cannot be read. An allocation's advised middle is a
/// mapping of its own (the kernel splits it off), its ends not.
pub fn backing(start: usize, len: usize) -> Option<Backing> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    Some(parse_backing(&smaps, start, len))
}

/// The pure part of [`backing`].
fn parse_backing(smaps: &str, start: usize, len: usize) -> Backing {
    let end = start.saturating_add(len);
    let mut b = Backing {
        huge_bytes: 0,
        advised_bytes: 0,
    };
    // The overlap with the range of the mapping being read, if any.
    let mut inside: Option<u64> = None;
    for line in smaps.lines() {
        // A mapping's first line: `start-end perms offset dev inode [path]`.
        let range = line
            .split_whitespace()
            .next()
            .and_then(|r| r.split_once('-'))
            .and_then(|(a, b)| {
                Some((
                    usize::from_str_radix(a, 16).ok()?,
                    usize::from_str_radix(b, 16).ok()?,
                ))
            });
        if let Some((lo, hi)) = range {
            let overlap = hi.min(end).saturating_sub(lo.max(start));
            inside = (overlap > 0).then_some(overlap as u64);
            continue;
        }
        let Some(overlap) = inside else {
            continue;
        };
        if let Some(kb) = line.strip_prefix("AnonHugePages:") {
            let kb = kb.trim().trim_end_matches("kB").trim();
            let huge = kb.parse::<u64>().unwrap_or(0) * 1024;
            b.huge_bytes += huge.min(overlap);
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            if flags.split_whitespace().any(|f| f == "hg") {
                b.advised_bytes += overlap;
            }
        }
    }
    b.huge_bytes = b.huge_bytes.min(len as u64);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0021000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
AnonHugePages:         0 kB
VmFlags: rd wr mr mw me ac sd
7f0000000000-7f0001400000 rw-p 00000000 00:00 0 
Size:              20480 kB
AnonHugePages:     18432 kB
VmFlags: rd wr mr mw me ac sd hg
7f0001400000-7f0001401000 r--p 00000000 08:01 42                         /usr/lib/x86_64-linux-gnu/libc.so.6
Size:                  4 kB
AnonHugePages:         0 kB
VmFlags: rd mr mw me sd
";

    #[test]
    fn a_range_sums_the_mappings_it_overlaps() {
        const MB: u64 = 1 << 20;
        // The whole 20 MB mapping: 18 MB of huge pages, all advised.
        let all = parse_backing(SMAPS, 0x7f00_0000_0000, 20 << 20);
        assert_eq!(all.huge_bytes, 18 * MB);
        assert_eq!(all.advised_bytes, 20 * MB);
        // A range from the heap's last page into the mapping's first MB:
        // 1 MB advised, the huge bytes capped at the overlap.
        let part = parse_backing(SMAPS, 0x55d0_c002_0000, 0x7f00_0010_0000 - 0x55d0_c002_0000);
        assert_eq!(part.advised_bytes, MB);
        assert_eq!(part.huge_bytes, MB);
        // Across the mapping's end into libc: 4 KB of libc, not advised.
        let tail = parse_backing(SMAPS, 0x7f00_0140_0000 - 4096, 8192);
        assert_eq!(tail.advised_bytes, 4096);
        assert_eq!(tail.huge_bytes, 4096);
        // Outside every mapping.
        let none = parse_backing(SMAPS, 0x1000, 4096);
        assert_eq!((none.huge_bytes, none.advised_bytes), (0, 0));
    }

    /// A buffer of at least two huge pages is its own mapping, zeroed
    /// and writable, its whole huge pages advised (and the kernel records
    /// the advice on exactly those); a small one is on the heap.
    #[test]
    fn a_large_buffer_is_mapped_and_advised_in_whole_huge_pages() {
        let Some(huge) = page_size() else {
            assert_eq!(I8Buffer::zeroed(1 << 23).advised(), 0, "no THP here");
            return;
        };
        let len = 2 * huge + huge / 2 + 3;
        let mut b = I8Buffer::zeroed(len);
        assert_eq!(b.len(), len);
        assert_eq!(b.as_ptr() as usize % huge, 0, "starts on a huge page");
        assert_eq!(b.advised(), 2 * huge, "the half page at the end is not");
        assert!(b.iter().all(|&v| v == 0));
        b.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = (i % 251) as i8);
        assert!(b.iter().enumerate().all(|(i, &v)| v == (i % 251) as i8));
        // The kernel recorded the advice on exactly those pages. Not under
        // qemu-user (`make test`'s aarch64 stage): it accepts the advice
        // but writes smaps itself, without `hg` (and shows the guest the
        // x86 host's /proc/cpuinfo, which is how it is recognized here).
        let emulated = cfg!(not(target_arch = "x86_64"))
            && std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains("vendor_id"));
        if !emulated {
            let seen = backing(b.as_ptr() as usize, len).expect("/proc/self/smaps");
            assert_eq!(seen.advised_bytes, 2 * huge as u64, "{seen:?}");
        }
        drop(b);
        let small = I8Buffer::zeroed(huge);
        assert_eq!((small.len(), small.advised()), (huge, 0));
        let from_vec = I8Buffer::from(vec![1i8, 2, 3]);
        assert_eq!(&from_vec[..], &[1, 2, 3]);
    }
}
