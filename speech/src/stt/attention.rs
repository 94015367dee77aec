//! Attention as one op over the operands where they lie (issue 30).
//!
//! talkie's decoder graphs (`models/whisper_onnx.py`, `Graph.attention`)
//! spell attention in standard ONNX, so onnxruntime and the converter
//! checks read them: split heads (Reshape, Transpose), `q·kᵀ` (MatMul),
//! scale (Mul), Softmax, `·v` (MatMul), merge heads (Transpose, Reshape).
//! tract runs that chain as general matrix products, and in a decoder step
//! the query is one row: every step it moved the cross-attention keys and
//! values (fixed for the whole utterance, ~600 KB per layer) into head
//! order and packed them for a matrix kernel whose 64-row tile then held
//! one useful row. `perf record` of `talkie transcribe` (int8, 1 thread,
//! dev clips) put 49 % of the decoder step in that chain (packing 17 %,
//! the axis moves 8 %, the f32 products 24 %).
//!
//! Moonshine's decoder (its exported form, kept by
//! `models/moonshine_lean.py`) has the heads already apart and scales
//! every cross-attention key by √(1/√hd) each step, a full copy of K; its
//! chain is matched too (`match_split`).
//!
//! At load, `fuse` finds those chains in the ONNX graph and replaces
//! each by one `TalkieAttention` node; [`Attention`] computes it straight from
//! the operands' memory: per head, one dot product per key, a softmax, one
//! weighted sum of the values. Same arithmetic, no copies. The files on
//! disk do not change; a graph without the chain loads as before.

use tract_onnx::pb::{self, attribute_proto::AttributeType, AttributeProto, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

/// The fused node's ONNX op type (registered only in talkie's parser).
pub(super) const OP_TYPE: &str = "TalkieAttention";

pub(super) fn parse(
    _ctx: &tract_onnx::model::ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let heads = node.get_attr::<i64>("heads")?;
    let scale = node.get_attr::<f32>("scale")?;
    let heads = usize::try_from(heads).ok().filter(|&h| h > 0);
    let heads = heads.context("TalkieAttention: heads must be positive")?;
    let split = node.get_attr_opt::<i64>("split_heads")? == Some(1);
    let masked = node.get_attr_opt::<i64>("masked")? == Some(1);
    ensure!(
        !(split && masked),
        "TalkieAttention: a mask with heads apart"
    );
    Ok((
        expand(AttentionExpansion(Attention {
            heads,
            scale,
            split,
            masked,
        })),
        vec![],
    ))
}

/// Softmax(q·kᵀ·scale + mask)·v per head. q [B, Sq, d], k and v
/// [B, Sk, d] (heads side by side in `d`) → [B, Sq, d].
///
/// `masked`: a fourth input [Sq, Sk] is added to every head's scaled
/// scores (the decoder's causal mask when it takes several tokens at once:
/// 0 where a query sees a key, a large negative number after it). Without
/// it every query sees every key (a decoder step's one query is the newest
/// position; the cross-attention sees all of the audio).
///
/// `split`: heads already apart, q [B, H, Sq, hd], k and v [B, H, Sk, hd]
/// → [B, H, Sq, hd] (`heads` is then 1: each (batch, head) is a row),
/// and an optional fourth input, a scalar, multiplies the scores
/// (Moonshine scales q and kᵀ by its square root each).
#[derive(Debug, Clone, PartialEq)]
pub struct Attention {
    pub heads: usize,
    pub scale: f32,
    pub split: bool,
    pub masked: bool,
}

impl Eq for Attention {}

impl Attention {
    /// The op on plain slices: `q` is `b × sq × d`, `k` and `v` are
    /// `b × sk × d`, `out` like `q`, `mask` (if any) `sq × sk`, added to
    /// each head's scaled scores. `scores` is scratch (grown to
    /// `heads × sk`). The arithmetic is tract's for the chain it replaces:
    /// each score and each output a chain of fused multiply-adds in order
    /// (as its matrix kernels accumulate), tract's own softmax kernels.
    /// Keys are read eight rows at a time and values row by row, every
    /// head at once, so each is streamed from memory once and in order.
    pub fn run(
        &self,
        shape: (usize, usize, usize, usize),
        (q, k, v): (&[f32], &[f32], &[f32]),
        mask: Option<&[f32]>,
        out: &mut [f32],
        scores: &mut Vec<f32>,
    ) -> TractResult<()> {
        let (b, sq, sk, d) = shape;
        ensure!(
            mask.is_none_or(|m| m.len() == sq * sk),
            "a mask of {} for {sq} queries and {sk} keys",
            mask.map_or(0, <[f32]>::len)
        );
        ensure!(
            d > 0 && sk > 0 && d % self.heads.max(1) == 0,
            "attention over {sk} keys of width {d} in {} heads",
            self.heads
        );
        ensure!(
            q.len() >= b * sq * d && out.len() >= b * sq * d,
            "q or out shorter than {b}×{sq}×{d}"
        );
        ensure!(
            k.len() >= b * sk * d && v.len() >= b * sk * d,
            "k or v shorter than {b}×{sk}×{d}"
        );
        let softmax = Softmax::new()?;
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { self.run_avx2(shape, (q, k, v), mask, out, scores, &softmax) };
        }
        self.run_generic::<{ cfg!(target_arch = "aarch64") }>(
            shape,
            (q, k, v),
            mask,
            out,
            scores,
            &softmax,
        )
    }

    /// [`Self::run`] compiled for AVX2 + FMA: fused multiply-adds like
    /// tract's x86 kernels, and no legacy SSE code between tract's AVX
    /// kernels (which cost this loop 3× in place, `perf`).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(
        &self,
        shape: (usize, usize, usize, usize),
        qkv: (&[f32], &[f32], &[f32]),
        mask: Option<&[f32]>,
        out: &mut [f32],
        scores: &mut Vec<f32>,
        softmax: &Softmax,
    ) -> TractResult<()> {
        self.run_generic::<true>(shape, qkv, mask, out, scores, softmax)
    }

    /// `FMA`: accumulate with `mul_add` (only where the CPU has it, or it
    /// is a slow library call).
    #[inline(always)]
    fn run_generic<const FMA: bool>(
        &self,
        shape: (usize, usize, usize, usize),
        (q, k, v): (&[f32], &[f32], &[f32]),
        mask: Option<&[f32]>,
        out: &mut [f32],
        scores: &mut Vec<f32>,
        softmax: &Softmax,
    ) -> TractResult<()> {
        let (b, sq, sk, d) = shape;
        let heads = self.heads.max(1);
        let hd = d / heads;
        // tract's reduce kernels split a row by its alignment (an unaligned
        // head and tail go through a scratch buffer), so the same scores at
        // another address sum in another order: each head's row starts on a
        // 64-byte boundary, as tract's own tensors do, or the op's output
        // would change in the last bits from run to run with where the
        // allocator put `scores`.
        let stride = sk.next_multiple_of(ALIGN_F32);
        scores.clear();
        scores.resize(heads * stride + ALIGN_F32, 0.0);
        let start = scores.as_ptr().align_offset(ALIGN_F32 * 4).min(ALIGN_F32);
        let scores = &mut scores[start..start + heads * stride];
        for bi in 0..b {
            let keys = &k[bi * sk * d..][..sk * d];
            let values = &v[bi * sk * d..][..sk * d];
            for s in 0..sq {
                let row = (bi * sq + s) * d;
                let qs = &q[row..][..d];
                for (block, rows) in keys.chunks(LANES * d).enumerate() {
                    for h in 0..heads {
                        let lo = h * hd;
                        let acc = dots::<FMA>(&qs[lo..lo + hd], rows, d, lo);
                        let t0 = h * stride + block * LANES;
                        for (score, a) in scores[t0..].iter_mut().zip(&acc[..rows.len() / d]) {
                            *score = a * self.scale;
                        }
                    }
                }
                // As the chain adds it: to the scaled scores.
                if let Some(m) = mask {
                    let m = &m[s * sk..][..sk];
                    for head in scores.chunks_exact_mut(stride) {
                        for (score, &add) in head.iter_mut().zip(m) {
                            *score += add;
                        }
                    }
                }
                for head in scores.chunks_exact_mut(stride) {
                    softmax.run(&mut head[..sk])?;
                }
                let os = &mut out[row..][..d];
                os.fill(0.0);
                for (t, value) in values.chunks_exact(d).enumerate() {
                    for h in 0..heads {
                        let lo = h * hd;
                        axpy::<FMA>(
                            scores[h * stride + t],
                            &value[lo..lo + hd],
                            &mut os[lo..lo + hd],
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

/// Keys scored together.
const LANES: usize = 8;

/// f32 values in 64 bytes: each head's scores start at such a boundary.
const ALIGN_F32: usize = 16;

/// `q` against up to [`LANES`] rows (`rows` holds whole rows of width
/// `d`; the head starts at `lo`): one in-order accumulation per row.
#[inline(always)]
fn dots<const FMA: bool>(q: &[f32], rows: &[f32], d: usize, lo: usize) -> [f32; LANES] {
    let mut acc = [0f32; LANES];
    let n = (rows.len() / d).min(LANES);
    if n == LANES {
        let r: [&[f32]; LANES] = std::array::from_fn(|j| &rows[j * d + lo..][..q.len()]);
        for (i, &qi) in q.iter().enumerate() {
            for j in 0..LANES {
                acc[j] = madd::<FMA>(qi, r[j][i], acc[j]);
            }
        }
    } else {
        for (j, a) in acc.iter_mut().enumerate().take(n) {
            let r = &rows[j * d + lo..][..q.len()];
            for (&qi, &ki) in q.iter().zip(r) {
                *a = madd::<FMA>(qi, ki, *a);
            }
        }
    }
    acc
}

#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// tract's softmax over one row: its max, exp-and-sum and scale kernels
/// (`tract_core::ops::nn::Softmax` on f32), so the probabilities are the
/// ones the replaced chain computed.
struct Softmax {
    max: Box<dyn tract_linalg::reduce::Reduce<f32>>,
    exp_sum: Box<dyn tract_linalg::reduce::MapReduce<f32, f32>>,
    scale: Box<dyn tract_linalg::element_wise::ElementWise<f32, f32>>,
}

impl Softmax {
    fn new() -> TractResult<Self> {
        use tract_linalg::Func;
        Ok(Self {
            max: Func::ReduceMax.reduce_f32()?,
            exp_sum: Func::Softmax2.map_reduce_f32()?,
            scale: Func::MulByScalar.ew_f32_param()?,
        })
    }

    fn run(&self, x: &mut [f32]) -> TractResult<()> {
        let max = self.max.run(x)?;
        let sum = self.exp_sum.run_with_params(x, max)?;
        self.scale.run_with_params(x, sum.recip())
    }
}

/// `out += a · x`, one in-order accumulation per output.
#[inline(always)]
fn axpy<const FMA: bool>(a: f32, x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = madd::<FMA>(a, v, *o);
    }
}

impl Op for Attention {
    fn name(&self) -> StaticName {
        "TalkieAttention".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "heads={} scale={} split={} masked={}",
            self.heads, self.scale, self.split, self.masked
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Attention {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (Some(q), Some(k), Some(v)) = (inputs.first(), inputs.get(1), inputs.get(2)) else {
            bail!("TalkieAttention takes q, k, v");
        };
        let (qs, ks) = (q.shape(), k.shape());
        ensure!(v.shape() == ks, "shapes {qs:?} {ks:?}");
        let (op, (b, sq, sk, d)) = if self.split {
            ensure!(qs.len() == 4 && ks.len() == 4, "shapes {qs:?} {ks:?}");
            ensure!(qs[..2] == ks[..2] && qs[3] == ks[3], "shapes {qs:?} {ks:?}");
            let extra = match inputs.get(3) {
                Some(t) => t.cast_to_scalar::<f32>()?,
                None => 1.0,
            };
            let op = Attention {
                heads: 1,
                scale: self.scale * extra,
                split: false,
                masked: false,
            };
            (op, (qs[0] * qs[1], qs[2], ks[2], qs[3]))
        } else {
            ensure!(qs.len() == 3 && ks.len() == 3, "shapes {qs:?} {ks:?}");
            ensure!(
                ks[0] == qs[0] && ks[2] == qs[2] && qs[2] % self.heads == 0,
                "shapes {qs:?} {ks:?}"
            );
            (self.clone(), (qs[0], qs[1], ks[1], qs[2]))
        };
        let mask = match (op.masked, inputs.get(3)) {
            (true, Some(m)) => {
                ensure!(m.shape() == [sq, sk], "mask {:?} for {sq}×{sk}", m.shape());
                Some(m.try_as_plain_ram()?)
            }
            (true, None) => bail!("TalkieAttention: masked, but no mask"),
            (false, _) => None,
        };
        let mask = match &mask {
            Some(m) => Some(m.as_slice::<f32>()?),
            None => None,
        };
        let (q, k, v) = (
            q.try_as_plain_ram()?,
            k.try_as_plain_ram()?,
            v.try_as_plain_ram()?,
        );
        let mut out = vec![0f32; b * sq * d];
        let mut scores = Vec::new();
        op.run(
            (b, sq, sk, d),
            (
                q.as_slice::<f32>()?,
                k.as_slice::<f32>()?,
                v.as_slice::<f32>()?,
            ),
            mask,
            &mut out,
            &mut scores,
        )?;
        let out = tract_ndarray::ArrayD::from_shape_vec(qs.to_vec(), out)?;
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for Attention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            (3..=4).contains(&inputs.len()),
            "TalkieAttention takes q, k, v"
        );
        ensure!(inputs.iter().all(|f| f.datum_type == f32::datum_type()));
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// [`Attention`] in the ONNX parser's (inference) model.
#[derive(Debug, Clone)]
struct AttentionExpansion(Attention);

impl Expansion for AttentionExpansion {
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
        ensure!(
            (3..=4).contains(&inputs.len()),
            "TalkieAttention takes q, k, v"
        );
        check_output_arity(outputs, 1)?;
        let rank = if self.0.split { 4 } else { 3 };
        for (i, input) in inputs.iter().enumerate() {
            s.equals(&input.datum_type, f32::datum_type())?;
            if i < 3 {
                s.equals(&input.rank, rank)?;
            } else if self.0.masked {
                s.equals(&input.rank, 2)?;
            }
        }
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].shape, &inputs[0].shape)?;
        Ok(())
    }
}

/// Replace every attention chain of `Graph.attention` (see the module
/// doc) in `graph` by one [`OP_TYPE`] node; nodes only the chains used
/// are removed. Returns how many chains were fused. A chain that differs
/// in any op, permutation, shape or input is left as it is.
pub(super) fn fuse(graph: &mut pb::GraphProto) -> usize {
    let mut fused = Vec::new();
    for (i, node) in graph.node.iter().enumerate() {
        if let Some(f) = match_chain(graph, i, node).or_else(|| match_split(graph, i, node)) {
            fused.push(f);
        }
    }
    let n = fused.len();
    for (end, node) in fused.into_iter().rev() {
        graph.node[end] = node;
    }
    remove_unused(graph);
    n
}

/// The chain ending at node `end` (the head-merging Reshape), as the node
/// that replaces it.
fn match_chain(graph: &pb::GraphProto, end: usize, node: &NodeProto) -> Option<(usize, NodeProto)> {
    let g = Graph(graph);
    // Reshape(Transpose(MatMul(probs, vh), [0,2,1,3]), [1,-1,d])
    (node.op_type == "Reshape").then_some(())?;
    let merged = g.producer(node.input.first()?, "Transpose", Some(&[0, 2, 1, 3]))?;
    let pv = g.producer(merged.input.first()?, "MatMul", None)?;
    let probs = g.producer(pv.input.first()?, "Softmax", None)?;
    let v = g.split_heads(pv.input.get(1)?)?;
    // Add(scaled, mask) when the graph masks the scores.
    let (scores, mask) = match g.producer(probs.input.first()?, "Add", None) {
        Some(add) => (add.input.first()?, Some(add.input.get(1)?.clone())),
        None => (probs.input.first()?, None),
    };
    let scaled = g.producer(scores, "Mul", None)?;
    let scale = g.scalar(scaled.input.get(1)?)?;
    let qk = g.producer(scaled.input.first()?, "MatMul", None)?;
    let q = g.split_heads(qk.input.first()?)?;
    let kt = g.producer(qk.input.get(1)?, "Transpose", Some(&[0, 1, 3, 2]))?;
    let k = g.split_heads(kt.input.first()?)?;
    let d = q.1 * q.2;
    let shape = g.ints(node.input.get(1)?)?;
    (shape == [1, -1, d as i64] && k.1 == q.1 && v.1 == q.1 && k.2 == q.2 && v.2 == q.2)
        .then_some(())?;
    let mut attribute = vec![attr_int("heads", q.1 as i64), attr_float("scale", scale)];
    let mut input = vec![q.0, k.0, v.0];
    if let Some(mask) = mask {
        attribute.push(attr_int("masked", 1));
        input.push(mask);
    }
    Some((
        end,
        NodeProto {
            name: format!("{}_fused", node.name),
            op_type: OP_TYPE.into(),
            input,
            output: node.output.clone(),
            attribute,
            ..Default::default()
        },
    ))
}

/// Moonshine's cross-attention (`models/moonshine_lean.py` keeps the
/// exported graph's form): `MatMul(Softmax(MatMul(q', Mul(Transpose(k,
/// [0,1,3,2]), s))), v)` with `k` and `v` graph inputs already split in
/// heads [1, H, T, hd] and `q'` the scaled query; the node that replaces
/// the last MatMul multiplies the scores by `s` instead of every key.
fn match_split(graph: &pb::GraphProto, end: usize, node: &NodeProto) -> Option<(usize, NodeProto)> {
    let g = Graph(graph);
    (node.op_type == "MatMul").then_some(())?;
    let v = node.input.get(1)?;
    let probs = g.producer(node.input.first()?, "Softmax", None)?;
    let axis = probs
        .attribute
        .iter()
        .find(|a| a.name == "axis")
        .map_or(-1, |a| a.i);
    (axis == -1 || axis == 3).then_some(())?;
    let qk = g.producer(probs.input.first()?, "MatMul", None)?;
    let scaled = g.producer(qk.input.get(1)?, "Mul", None)?;
    let kt = g.producer(scaled.input.first()?, "Transpose", Some(&[0, 1, 3, 2]))?;
    let k = kt.input.first()?;
    let inputs = |name: &String| graph.input.iter().any(|i| &i.name == name);
    (inputs(k) && inputs(v)).then_some(())?;
    Some((
        end,
        NodeProto {
            name: format!("{}_fused", node.name),
            op_type: OP_TYPE.into(),
            input: vec![
                qk.input.first()?.clone(),
                k.clone(),
                v.clone(),
                scaled.input.get(1)?.clone(),
            ],
            output: node.output.clone(),
            attribute: vec![
                attr_int("heads", 1),
                attr_float("scale", 1.0),
                attr_int("split_heads", 1),
            ],
            ..Default::default()
        },
    ))
}

fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f,
        ..Default::default()
    }
}

/// Lookups over a graph's nodes and initializers (also `linear.rs`'s).
pub(super) struct Graph<'a>(pub(super) &'a pb::GraphProto);

impl Graph<'_> {
    /// The node of type `op` producing `name`, with `perm` if given.
    pub(super) fn producer(
        &self,
        name: &str,
        op: &str,
        perm: Option<&[i64]>,
    ) -> Option<&NodeProto> {
        let node = self
            .0
            .node
            .iter()
            .find(|n| n.output.iter().any(|o| o == name))?;
        (node.op_type == op).then_some(())?;
        if let Some(perm) = perm {
            let attr = node.attribute.iter().find(|a| a.name == "perm")?;
            (attr.ints == perm).then_some(())?;
        }
        Some(node)
    }

    /// `Transpose(Reshape(x, [1, -1, H, hd]), [0, 2, 1, 3])` → (x, H, hd).
    fn split_heads(&self, name: &str) -> Option<(String, usize, usize)> {
        let t = self.producer(name, "Transpose", Some(&[0, 2, 1, 3]))?;
        let r = self.producer(t.input.first()?, "Reshape", None)?;
        match self.ints(r.input.get(1)?)?.as_slice() {
            &[1, -1, h, hd] if h > 0 && hd > 0 => {
                Some((r.input.first()?.clone(), h as usize, hd as usize))
            }
            _ => None,
        }
    }

    pub(super) fn initializer(&self, name: &str) -> Option<&pb::TensorProto> {
        self.0.initializer.iter().find(|t| t.name == name)
    }

    /// An int64 initializer's values.
    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        let t = self.initializer(name)?;
        if !t.int64_data.is_empty() {
            return Some(t.int64_data.clone());
        }
        (t.data_type == pb::tensor_proto::DataType::Int64 as i32).then_some(())?;
        let raw = t.raw_data.as_slice();
        (raw.len() % 8 == 0).then_some(())?;
        raw.chunks_exact(8)
            .map(|c| c.try_into().ok().map(i64::from_le_bytes))
            .collect()
    }

    /// A float32 scalar initializer.
    fn scalar(&self, name: &str) -> Option<f32> {
        let t = self.initializer(name)?;
        (t.data_type == pb::tensor_proto::DataType::Float as i32
            && t.dims.iter().product::<i64>() == 1)
            .then_some(())?;
        if let Some(&f) = t.float_data.first() {
            return Some(f);
        }
        Some(f32::from_le_bytes(t.raw_data.get(..4)?.try_into().ok()?))
    }
}

/// Drop nodes none of whose outputs is read (by a node or as a graph
/// output), until none is left.
pub(super) fn remove_unused(graph: &mut pb::GraphProto) {
    loop {
        let used: std::collections::HashSet<String> = graph
            .node
            .iter()
            .flat_map(|n| n.input.iter().cloned())
            .chain(graph.output.iter().map(|o| o.name.clone()))
            .collect();
        let before = graph.node.len();
        graph
            .node
            .retain(|n| n.output.iter().any(|o| used.contains(o)));
        if graph.node.len() == before {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook formula, one head at a time, in f64.
    /// `causal`: query `i` sees keys `..= sk - sq + i` only.
    fn reference(
        heads: usize,
        scale: f32,
        s: (usize, usize, usize),
        q: &[f32],
        k: &[f32],
        v: &[f32],
        causal: bool,
    ) -> Vec<f32> {
        let (sq, sk, d) = s;
        let hd = d / heads;
        let mut out = vec![0f32; sq * d];
        for i in 0..sq {
            for h in 0..heads {
                let seen = if causal { sk - sq + i + 1 } else { sk };
                let sc: Vec<f64> = (0..seen)
                    .map(|t| {
                        (0..hd)
                            .map(|j| q[i * d + h * hd + j] as f64 * k[t * d + h * hd + j] as f64)
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for j in 0..hd {
                    let o: f64 = (0..seen)
                        .map(|t| e[t] / z * v[t * d + h * hd + j] as f64)
                        .sum();
                    out[i * d + h * hd + j] = o as f32;
                }
            }
        }
        out
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn shapes_it_cannot_compute_are_errors_not_panics() {
        let op = Attention {
            heads: 2,
            scale: 1.0,
            split: false,
            masked: false,
        };
        let mut out = vec![0f32; 4];
        let (q, kv) = (vec![1f32; 4], vec![1f32; 8]);
        // no keys, no width, heads not dividing the width, k/v shorter
        // than 4 keys, q shorter than 2 queries
        for shape in [
            (1, 1, 0, 4),
            (1, 1, 2, 0),
            (1, 1, 2, 3),
            (1, 1, 4, 4),
            (1, 2, 2, 4),
        ] {
            let got = op.run(shape, (&q, &kv, &kv), None, &mut out, &mut Vec::new());
            assert!(got.is_err(), "{shape:?}");
        }
        assert!(op
            .run(
                (1, 1, 2, 4),
                (&q, &kv, &kv),
                None,
                &mut out,
                &mut Vec::new()
            )
            .is_ok());
        assert_eq!(out, [1.0; 4], "softmax of equal scores, values all 1");
    }

    /// The op on `(sq, sk, d)` in `heads` against [`reference`]
    /// (`causal`: with the decoder's mask, query `i` seeing keys up to
    /// `sk - sq + i`); returns the inputs for further checks.
    fn agrees_with_reference(
        heads: usize,
        (sq, sk, d): (usize, usize, usize),
        causal: bool,
    ) -> Inputs {
        let seed = if causal { 4 } else { 1 };
        let (q, k, v) = (
            data(sq * d, seed),
            data(sk * d, seed + 1),
            data(sk * d, seed + 2),
        );
        let mask: Vec<f32> = (0..sq)
            .flat_map(|i| (0..sk).map(move |j| if j > sk - sq + i { -1e4 } else { 0.0 }))
            .collect();
        let op = Attention {
            heads,
            scale: 0.125,
            split: false,
            masked: causal,
        };
        let mut out = vec![f32::NAN; sq * d];
        let m = causal.then_some(mask.as_slice());
        op.run((1, sq, sk, d), (&q, &k, &v), m, &mut out, &mut Vec::new())
            .unwrap();
        let want = reference(heads, 0.125, (sq, sk, d), &q, &k, &v, causal);
        for (a, b) in out.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{heads} {sq} {sk} {d}: {a} vs {b}");
        }
        Inputs {
            op,
            q,
            k,
            v,
            mask,
            out,
        }
    }

    struct Inputs {
        op: Attention,
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        mask: Vec<f32>,
        out: Vec<f32>,
    }

    #[test]
    fn the_op_is_attention_on_odd_sizes() {
        for (heads, sq, sk, d) in [
            (6, 1, 1, 384),
            (6, 1, 37, 384),
            (2, 3, 5, 12),
            (8, 1, 406, 416),
        ] {
            agrees_with_reference(heads, (sq, sk, d), false);
        }
    }

    /// Several queries at once with the decoder's causal mask (each sees
    /// the keys up to its own position): the textbook formula over the
    /// keys it sees; a mask of the wrong size is an error.
    #[test]
    fn a_causal_mask_hides_the_later_keys() {
        let (sq, sk, d) = (4, 9, 384);
        let Inputs {
            op,
            q,
            k,
            v,
            mask,
            mut out,
        } = agrees_with_reference(6, (sq, sk, d), true);
        let short = &mask[1..];
        let got = op.run(
            (1, sq, sk, d),
            (&q, &k, &v),
            Some(short),
            &mut out,
            &mut Vec::new(),
        );
        assert!(got.is_err());
    }
}
