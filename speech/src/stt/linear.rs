//! The int8 graphs' linear layers on talkie's own integer kernels (issue
//! 30).
//!
//! onnxruntime's `quantize_dynamic` (`models/convert_whisper.py`) writes
//! each int8 linear layer as a chain: `DynamicQuantizeLinear(x)` (the
//! activation to uint8 with one scale per tensor), `MatMulInteger(xq, W,
//! xzp, 0)`, `Cast` to float, `Mul` by the activation's scale times the
//! weights' (per output channel for Whisper, one for Moonshine). tract
//! runs that chain as five ops and its integer product on its i32 matrix
//! kernels: in a decoder step, where `x` is one row, the int8 step graph
//! had 627 nodes (fp32: 235) and most of its time was tract's cost per
//! node; on x86 CPUs without AVX-512 tract's int8 kernel
//! (`avx2_mmm_i32_8x8`) is slow outright: on an AMD EPYC (family 23
//! model 49, Zen 2, AVX2) a Whisper int8 decoder step took 103 ms against
//! fp32's 5.0 ms.
//!
//! At load, `fuse` replaces each such chain by one `TalkieLinearI8` node
//! holding `W` transposed to rows, and [`LinearI8`] computes every row of
//! `x` as the vocabulary projection does ([`super::dot`]): the row
//! quantized once to 15 bits (13–14 for the 1536/1664-wide inputs of the
//! second FFN layer) and each output an exact integer dot product on the
//! CPU's fastest kernel (AVX-512 VNNI, AVX2 — also where AVX-VNNI is,
//! see `layer_kernel` — NEON `sdot`, NEON, portable), so every kernel
//! gives the same floats. The activation keeps
//! 15 bits instead of 8, which moves the int8 forms' numbers toward
//! fp32's. The files on disk do not change. Decoders and encoders are
//! both fused (`load_decoder_plan`, `load_plan`): an encoder's rows are
//! split over the encoder's pool ([`LinearI8::run_split`]) and read each
//! weight row once per four frames (`Kernel::project4`), or, on AVX-512
//! VNNI, run as a matrix product on weights packed at load
//! (`dot::gemm_packed`: 16 rows by up to 8 frames per pass).

use super::attention::Graph;
use super::dot::{gemm_packed, pack16, row_sums, unpack16, Hidden, Kernel};
use std::sync::Arc;
use tract_onnx::pb::{self, attribute_proto::AttributeType, AttributeProto, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

/// The fused node's ONNX op type (registered only in talkie's parser).
pub(super) const OP_TYPE: &str = "TalkieLinearI8";

/// Inputs of at least this many rows are split over the current tract
/// pool's threads (an encoder's frames); a decoder step's single row is
/// not worth a thread hand-off.
pub const MIN_SPLIT_ROWS: usize = 8;

/// `out[r, n] = (x[r] · W[n]) · scale[n]` for int8 rows `W` [n, k], `x`
/// [..., k] → [..., n], `x`'s rows quantized by [`Hidden`].
#[derive(Clone)]
pub struct LinearI8 {
    /// `W` row-major, or [`pack16`]ed for the AVX-512 VNNI matrix kernel
    /// (`packed`): one layout at a time, not both in memory.
    rows: Arc<[i8]>,
    packed: bool,
    sums: Arc<[i32]>,
    scale: Arc<[f32]>,
    k: usize,
    kernel: Kernel,
}

impl std::fmt::Debug for LinearI8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinearI8")
            .field("k", &self.k)
            .field("n", &self.scale.len())
            .field("kernel", &self.kernel.name())
            .finish_non_exhaustive()
    }
}

impl PartialEq for LinearI8 {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.rows, &other.rows) && Arc::ptr_eq(&self.scale, &other.scale)
    }
}

impl Eq for LinearI8 {}

impl LinearI8 {
    /// `rows` [n, k] row-major, one `scale` per row; None if the sizes
    /// disagree or `k` is wider than [`Hidden`] holds.
    pub fn new(rows: Vec<i8>, scale: Vec<f32>, k: usize) -> Option<Self> {
        let n = scale.len();
        (k > 0 && k <= super::dot::MAX_WIDTH && n > 0 && rows.len() == n * k).then_some(())?;
        let mut op = Self {
            sums: row_sums(&rows, k).into(),
            rows: rows.into(),
            packed: false,
            scale: scale.into(),
            k,
            kernel: Kernel::Portable,
        };
        op.set_kernel(layer_kernel());
        Some(op)
    }

    fn n(&self) -> usize {
        self.scale.len()
    }

    /// Every `k`-wide row of `x` into an `n`-wide row of `out`.
    pub fn run(&self, x: &[f32], out: &mut [f32]) -> TractResult<()> {
        ensure!(
            x.len().is_multiple_of(self.k) && out.len() == x.len() / self.k * self.n(),
            "TalkieLinearI8: {} inputs for width {}, {} outputs",
            x.len(),
            self.k,
            out.len()
        );
        if self.packed {
            return self.run_packed(x, out);
        }
        // Four quantized states (on the heap: 32 KB), refilled four rows
        // at a time (the kernel reads each weight row once for all four),
        // then one for the rest (a decoder step's single row).
        let state = || Hidden::new(&[]).context("TalkieLinearI8: no state");
        let (k, n) = (self.k, self.n());
        let mut x4 = x.chunks_exact(4 * k);
        let mut out4 = out.chunks_exact_mut(4 * n);
        if x4.len() > 0 {
            let mut hs = (0..4).map(|_| state()).collect::<TractResult<Vec<_>>>()?;
            for (x, out) in x4.by_ref().zip(out4.by_ref()) {
                for (h, row) in hs.iter_mut().zip(x.chunks_exact(k)) {
                    ensure!(h.set(row), "TalkieLinearI8: row too wide");
                }
                if let [a, b, c, d] = hs.as_slice() {
                    self.kernel
                        .project4(&self.rows, &self.sums, &self.scale, [a, b, c, d], out);
                }
            }
        }
        let mut h = state()?;
        for (row, out) in x4
            .remainder()
            .chunks_exact(k)
            .zip(out4.into_remainder().chunks_exact_mut(n))
        {
            ensure!(h.set(row), "TalkieLinearI8: row too wide");
            self.kernel
                .project(&self.rows, &self.sums, &self.scale, &h, out);
        }
        Ok(())
    }

    /// [`LinearI8::run`] on the packed rows: up to eight of `x`'s rows
    /// quantized at a time (on the heap) and multiplied by the whole
    /// matrix in one pass of [`gemm_packed`].
    fn run_packed(&self, x: &[f32], out: &mut [f32]) -> TractResult<()> {
        let (k, n) = (self.k, self.n());
        let rows = x.len() / k;
        let mut hs = (0..rows.min(8))
            .map(|_| Hidden::new(&[]).context("TalkieLinearI8: no state"))
            .collect::<TractResult<Vec<_>>>()?;
        for (x, out) in x.chunks(8 * k).zip(out.chunks_mut(8 * n)) {
            let states = x.len() / k;
            for (h, row) in hs.iter_mut().zip(x.chunks_exact(k)) {
                ensure!(h.set(row), "TalkieLinearI8: row too wide");
            }
            ensure!(
                gemm_packed(&self.rows, n, &self.sums, &self.scale, &hs[..states], out),
                "TalkieLinearI8: the packed kernel does not run here"
            );
        }
        Ok(())
    }

    /// [`LinearI8::run`], the rows split over the current tract pool's
    /// threads when there are [`MIN_SPLIT_ROWS`] or more; whole rows per
    /// piece, so the result is the same floats as on one thread.
    pub fn run_split(&self, x: &[f32], out: &mut [f32]) -> TractResult<()> {
        use rayon::prelude::*;
        let rows = x.len() / self.k.max(1);
        let pool = match tract_linalg::multithread::current_tract_executor() {
            tract_linalg::multithread::Executor::MultiThread(pool)
                if rows >= MIN_SPLIT_ROWS && pool.current_num_threads() > 1 =>
            {
                pool
            }
            _ => return self.run(x, out),
        };
        ensure!(
            x.len().is_multiple_of(self.k) && out.len() == rows * self.n(),
            "TalkieLinearI8: {} inputs for width {}, {} outputs",
            x.len(),
            self.k,
            out.len()
        );
        // Four pieces per thread, each a multiple of eight rows (the
        // packed kernel's, and twice `project4`'s): a thread
        // slowed by another on its core (agreement runs Moonshine beside
        // Whisper's pool) leaves its pieces to the others.
        let per = rows
            .div_ceil(4 * pool.current_num_threads())
            .next_multiple_of(8);
        pool.install(|| {
            x.par_chunks(per * self.k)
                .zip(out.par_chunks_mut(per * self.n()))
                .try_for_each(|(x, out)| self.run(x, out))
        })
    }

    /// Use `kernel` (tests compare them); false when this CPU does not
    /// run it.
    ///
    /// AVX-512 VNNI runs the packed matrix kernel ([`gemm_packed`]) on the
    /// rows packed once here; the others the row kernels.
    pub fn set_kernel(&mut self, kernel: Kernel) -> bool {
        let ok = kernel.runs_here();
        if ok {
            let packed = kernel == Kernel::Avx512Vnni;
            if packed != self.packed {
                self.rows = if packed {
                    pack16(&self.rows, self.k).into()
                } else {
                    unpack16(&self.rows, self.n(), self.k).into()
                };
                self.packed = packed;
            }
            self.kernel = kernel;
        }
        ok
    }

    fn output_shape<D: Clone>(&self, input: &[D], n: D) -> TVec<D> {
        let mut shape: TVec<D> = input.iter().cloned().collect();
        if let Some(last) = shape.last_mut() {
            *last = n;
        }
        shape
    }
}

/// The kernel the int8 layers start on: the fastest this CPU runs, but
/// AVX2 rather than AVX-VNNI, whose row kernel reads the weights once
/// per frame where AVX2's `project4` reads them once per four: on an
/// encoder's layers (704 frames, 384 × 1536 and 1536 × 384, one thread)
/// AVX-VNNI took 18.9 / 24.3 ms against AVX2's 11.0 / 13.7 and the packed
/// AVX-512 VNNI kernel's 4.7 / 8.6 (Xeon family 6 model 207, release; an
/// Intel N100 has AVX-VNNI without AVX-512).
fn layer_kernel() -> Kernel {
    match Kernel::best() {
        Kernel::AvxVnni if Kernel::Avx2.runs_here() => Kernel::Avx2,
        k => k,
    }
}

pub(super) fn parse(
    _ctx: &tract_onnx::model::ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let attr = |name: &str| node.attribute.iter().find(|a| a.name == name);
    let rows = attr("rows").and_then(|a| a.t.as_ref());
    let rows = rows.context("TalkieLinearI8: no rows")?;
    let scale = attr("scale").context("TalkieLinearI8: no scale")?;
    let (n, k) = match rows.dims.as_slice() {
        &[n, k] => (usize::try_from(n)?, usize::try_from(k)?),
        d => bail!("TalkieLinearI8: rows of shape {d:?}"),
    };
    let bytes = rows.raw_data.iter().map(|&b| b as i8).collect();
    let op = LinearI8::new(bytes, scale.floats.clone(), k)
        .filter(|op| op.n() == n)
        .context("TalkieLinearI8: rows and scales disagree")?;
    Ok((expand(LinearExpansion(op)), vec![]))
}

impl Op for LinearI8 {
    fn name(&self) -> StaticName {
        OP_TYPE.into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "k={} n={} kernel={}",
            self.k,
            self.n(),
            self.kernel.name()
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for LinearI8 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = inputs.first().context("TalkieLinearI8 takes x")?;
        let shape = self.output_shape(x.shape(), self.n());
        let x = x.try_as_plain_ram()?;
        let mut out = vec![0f32; shape.iter().product()];
        self.run_split(x.as_slice::<f32>()?, &mut out)?;
        let out = tract_ndarray::ArrayD::from_shape_vec(shape.to_vec(), out)?;
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for LinearI8 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs.first().context("TalkieLinearI8 takes x")?;
        ensure!(x.datum_type == f32::datum_type());
        let shape: TVec<TDim> = x.shape.to_tvec();
        Ok(tvec!(f32::fact(self.output_shape(&shape, self.n().into()))))
    }

    as_op!();
}

/// [`LinearI8`] in the ONNX parser's (inference) model.
#[derive(Debug, Clone)]
struct LinearExpansion(LinearI8);

impl Expansion for LinearExpansion {
    fn name(&self) -> StaticName {
        OP_TYPE.into()
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.0.clone(), inputs)
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].rank, &inputs[0].rank)?;
        let n = self.0.n() as i64;
        s.given(&inputs[0].rank, move |s, rank| {
            let last = usize::try_from(rank)? - 1;
            for i in 0..last {
                s.equals(&outputs[0].shape[i], &inputs[0].shape[i])?;
            }
            s.equals(&outputs[0].shape[last], n.to_dim())
        })
    }
}

/// Replace every int8 linear chain of `quantize_dynamic` (see the module
/// doc) in `graph` by one [`OP_TYPE`] node; nodes only the chains used are
/// removed. Returns how many chains were fused. A chain whose weights are
/// not 2-D int8 with zero zero-points, or that differs in any op, is left
/// as it is.
pub(super) fn fuse(graph: &mut pb::GraphProto) -> usize {
    let mut fused = Vec::new();
    for node in &graph.node {
        if let Some(f) = match_chain(graph, node) {
            fused.push(f);
        }
    }
    let n = fused.len();
    for (end, node) in fused {
        if let Some(slot) = graph.node.get_mut(end) {
            *slot = node;
        }
    }
    super::attention::remove_unused(graph);
    n
}

/// The chain starting at `MatMulInteger` node `mm`: (the index of the
/// node it ends with, the node that replaces that one).
fn match_chain(graph: &pb::GraphProto, mm: &NodeProto) -> Option<(usize, NodeProto)> {
    (mm.op_type == "MatMulInteger" && mm.input.len() == 4).then_some(())?;
    let g = Graph(graph);
    let quant = g.producer(&mm.input[0], "DynamicQuantizeLinear", None)?;
    (quant.output.len() == 3 && mm.input[2] == quant.output[2]).then_some(())?;
    let (k, n, rows) = int8_rows(g.initializer(&mm.input[1])?)?;
    int8_zero(g.initializer(&mm.input[3])?)?;
    let (_, cast) = only_consumer(graph, &mm.output[0], "Cast")?;
    let (end, mul) = only_consumer(graph, cast.output.first()?, "Mul")?;
    let scales = mul.input.iter().find(|i| *i != &cast.output[0])?;
    let scales = g.producer(scales, "Mul", None)?;
    let weight_scale = scales.input.iter().find(|i| *i != &quant.output[1])?;
    (scales.input.iter().any(|i| i == &quant.output[1])).then_some(())?;
    let scale = floats(g.initializer(weight_scale)?)?;
    let scale = match scale.len() {
        1 => vec![scale[0]; n],
        len if len == n => scale,
        _ => return None,
    };
    Some((
        end,
        NodeProto {
            // Output names are unique in a graph; node names may be empty.
            name: format!("{}_fused", mul.output.first()?),
            op_type: OP_TYPE.into(),
            input: vec![quant.input.first()?.clone()],
            output: mul.output.clone(),
            attribute: vec![
                AttributeProto {
                    name: "rows".into(),
                    r#type: AttributeType::Tensor as i32,
                    t: Some(pb::TensorProto {
                        dims: vec![n as i64, k as i64],
                        data_type: pb::tensor_proto::DataType::Int8 as i32,
                        raw_data: rows,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                AttributeProto {
                    name: "scale".into(),
                    r#type: AttributeType::Floats as i32,
                    floats: scale,
                    ..Default::default()
                },
            ],
            ..Default::default()
        },
    ))
}

/// The one node reading `name`, with its index, if it is of type `op`
/// and nothing else reads it (a graph output counts as a reader).
fn only_consumer<'g>(
    graph: &'g pb::GraphProto,
    name: &str,
    op: &str,
) -> Option<(usize, &'g NodeProto)> {
    let mut readers = graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| n.input.iter().any(|i| i == name));
    let first = readers.next()?;
    let output = graph.output.iter().any(|o| o.name == name);
    (readers.next().is_none() && !output && first.1.op_type == op).then_some(first)
}

/// A 2-D int8 initializer [k, n] as (k, n, its bytes transposed to [n, k]
/// rows).
fn int8_rows(t: &pb::TensorProto) -> Option<(usize, usize, Vec<u8>)> {
    (t.data_type == pb::tensor_proto::DataType::Int8 as i32).then_some(())?;
    let (k, n) = match t.dims.as_slice() {
        &[k, n] => (usize::try_from(k).ok()?, usize::try_from(n).ok()?),
        _ => return None,
    };
    let bytes: Vec<u8> = if t.raw_data.is_empty() {
        t.int32_data.iter().map(|&v| v as i8 as u8).collect()
    } else {
        t.raw_data.clone()
    };
    (k > 0 && n > 0 && bytes.len() == k * n).then_some(())?;
    let mut rows = vec![0u8; k * n];
    for (i, col) in bytes.chunks_exact(n).enumerate() {
        for (j, &b) in col.iter().enumerate() {
            rows[j * k + i] = b;
        }
    }
    Some((k, n, rows))
}

/// An int8 initializer whose every element is 0.
fn int8_zero(t: &pb::TensorProto) -> Option<()> {
    (t.data_type == pb::tensor_proto::DataType::Int8 as i32
        && t.raw_data.iter().all(|&b| b == 0)
        && t.int32_data.iter().all(|&v| v == 0))
    .then_some(())
}

/// A float32 initializer's values.
fn floats(t: &pb::TensorProto) -> Option<Vec<f32>> {
    (t.data_type == pb::tensor_proto::DataType::Float as i32).then_some(())?;
    if !t.float_data.is_empty() {
        return Some(t.float_data.clone());
    }
    let raw = t.raw_data.as_slice();
    (raw.len().is_multiple_of(4) && !raw.is_empty()).then_some(())?;
    raw.chunks_exact(4)
        .map(|c| c.try_into().ok().map(f32::from_le_bytes))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The op on every kernel gives the portable loop's floats, and
    /// those are the dot products to the rounding of the inputs.
    #[test]
    fn every_row_is_the_dot_product_on_every_kernel() {
        let (n, k) = (5, 1536);
        let rows: Vec<i8> = (0..n * k)
            .map(|i| ((i * 37 % 255) as i32 - 127) as i8)
            .collect();
        let scale: Vec<f32> = (0..n).map(|i| 0.01 + i as f32 * 1e-3).collect();
        let x: Vec<f32> = (0..3 * k)
            .map(|i| ((i * 13 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let mut op = LinearI8::new(rows.clone(), scale.clone(), k).expect("sizes agree");
        assert_eq!(op.kernel, layer_kernel(), "starts on the layers' kernel");
        assert_ne!(
            op.kernel,
            Kernel::AvxVnni,
            "AVX2's four-frame kernel instead"
        );
        assert!(op.set_kernel(Kernel::Portable));
        let mut want = vec![0f32; 3 * n];
        op.run(&x, &mut want).expect("shapes agree");
        for (r, xr) in x.chunks_exact(k).enumerate() {
            // each element of the row off by at most half a step of its
            // 13-bit quantization (1536 wide), |q| <= 128
            let max = xr.iter().fold(0f32, |m, v| m.max(v.abs()));
            let step = f64::from(max) / 10922.0;
            for (j, row) in rows.chunks_exact(k).enumerate() {
                let exact: f64 = row
                    .iter()
                    .zip(xr)
                    .map(|(&q, &v)| f64::from(q) * f64::from(v))
                    .sum::<f64>()
                    * f64::from(scale[j]);
                let got = f64::from(want[r * n + j]);
                let bound = k as f64 * 0.5 * step * 128.0 * f64::from(scale[j]) + 1e-6;
                assert!((got - exact).abs() <= bound, "{got} vs {exact} ({bound})");
            }
        }
        for kernel in Kernel::available() {
            assert!(op.set_kernel(kernel));
            let mut got = vec![f32::NAN; 3 * n];
            op.run(&x, &mut got).expect("shapes agree");
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{}", kernel.name());
        }
        assert!(op.run(&x[1..], &mut want).is_err(), "a partial row");
        assert!(
            LinearI8::new(rows, scale, k + 1).is_none(),
            "sizes disagree"
        );
    }

    /// An encoder's many rows split over a pool give the floats one
    /// thread gives, bit for bit, for a row count the threads do not
    /// divide.
    #[test]
    fn rows_split_over_a_pool_are_the_same_floats() {
        use tract_linalg::multithread::{multithread_tract_scope, Executor};
        let (n, k, rows) = (7, 416, 19);
        let w: Vec<i8> = (0..n * k)
            .map(|i| ((i * 53 % 255) as i32 - 127) as i8)
            .collect();
        let op = LinearI8::new(w, vec![0.02; n], k).expect("sizes agree");
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 29 % 97) as f32 - 48.0) / 17.0)
            .collect();
        let mut one = vec![0f32; rows * n];
        op.run(&x, &mut one).expect("shapes agree");
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("a 2-thread pool");
        let mut split = vec![f32::NAN; rows * n];
        multithread_tract_scope(Executor::MultiThread(Arc::new(pool)), || {
            op.run_split(&x, &mut split)
        })
        .expect("shapes agree");
        assert!(one
            .iter()
            .zip(&split)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(op.run_split(&x[1..], &mut split).is_err(), "a partial row");
    }
}
