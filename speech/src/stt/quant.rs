//! ONNX `DynamicQuantizeLinear` without a library call per element
//! (issue 30).
//!
//! The int8 graphs quantize every activation before each integer matrix
//! product. tract's op rounds each element with `round_ties_even`, which
//! on baseline x86-64 (no SSE4.1) is a call to libm's `rintf`: `perf` of
//! `talkie transcribe` (int8, 1 thread) put 5.6 % of all time in `rintf`,
//! 3.7 % in the op and 4.1 % in its min/max fold. This op is tract's,
//! value for value (same min/max, same `x / scale`, round half to even,
//! same clamp), with the loops compiled for SSE4.1 when the CPU has it
//! (one `roundps` per 4 elements); elsewhere (aarch64 rounds in one
//! instruction anyway) the same code for the baseline.

use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

/// Parser entry for `DynamicQuantizeLinear` in talkie's ONNX parser.
pub(super) fn parse(
    _ctx: &tract_onnx::model::ParsingContext,
    _node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(Expansion_), vec![]))
}

/// `x → (round(x / scale) + zero point) as u8`, `scale` and `zero point`
/// from the range of `x` widened to include 0 (ONNX semantics).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DynamicQuantizeU8;

impl DynamicQuantizeU8 {
    /// Quantize `xs` into `ys`; returns (scale, zero point).
    pub fn run(xs: &[f32], ys: &mut [u8]) -> (f32, u8) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("sse4.1") {
            // SAFETY: the CPU has SSE4.1 (checked just above).
            return unsafe { run_sse41(xs, ys) };
        }
        run_generic(xs, ys)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.1")]
unsafe fn run_sse41(xs: &[f32], ys: &mut [u8]) -> (f32, u8) {
    run_generic(xs, ys)
}

#[inline(always)]
fn run_generic(xs: &[f32], ys: &mut [u8]) -> (f32, u8) {
    // tract_onnx::ops::quant::scale_and_zero_point, as a slice loop.
    let (min, max) = xs.iter().fold((0f32, 0f32), |(lo, hi), &v| {
        if v < lo {
            (v, hi)
        } else if v > hi {
            (lo, v)
        } else {
            (lo, hi)
        }
    });
    let scale = (max - min) / u8::MAX as f32;
    let zero_point = (-min / scale)
        .round_ties_even()
        .max(u8::MIN as f32)
        .min(u8::MAX as f32) as u8;
    let zp = i32::from(zero_point);
    for (y, &x) in ys.iter_mut().zip(xs) {
        *y = (((x / scale).round_ties_even() as i32) + zp).clamp(0, 255) as u8;
    }
    (scale, zero_point)
}

impl Op for DynamicQuantizeU8 {
    fn name(&self) -> StaticName {
        "TalkieDynamicQuantizeU8".into()
    }

    op_as_typed_op!();
}

impl EvalOp for DynamicQuantizeU8 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = inputs.first().context("DynamicQuantizeLinear takes x")?;
        let input = input.cast_to::<f32>()?;
        let mut dst = Tensor::zero::<u8>(input.shape())?;
        let (scale, zero_point) = Self::run(
            input.try_as_plain_ram()?.as_slice::<f32>()?,
            dst.try_as_plain_ram_mut()?.as_slice_mut::<u8>()?,
        );
        Ok(tvec!(
            dst.into_tvalue(),
            tensor0(scale).into(),
            tensor0(zero_point).into()
        ))
    }
}

impl TypedOp for DynamicQuantizeU8 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let input = inputs.first().context("DynamicQuantizeLinear takes x")?;
        let mut quantized = (*input).clone();
        quantized.datum_type = u8::datum_type();
        Ok(tvec!(quantized, f32::fact([0; 0]), u8::fact([0; 0])))
    }

    as_op!();
}

/// [`DynamicQuantizeU8`] in the parser's (inference) model; the rules are
/// tract's.
#[derive(Debug, Clone)]
#[allow(non_camel_case_types)]
struct Expansion_;

impl Expansion for Expansion_ {
    fn name(&self) -> StaticName {
        "DynamicQuantizeLinear".into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(3)
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 3)?;
        s.equals(&inputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        s.equals(&outputs[0].datum_type, u8::datum_type())?;
        s.equals(&outputs[1].datum_type, f32::datum_type())?;
        s.equals(&outputs[1].rank, 0)?;
        s.equals(&outputs[2].datum_type, u8::datum_type())?;
        s.equals(&outputs[2].rank, 0)?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let x = *inputs.first().context("DynamicQuantizeLinear takes x")?;
        model.wire_node(
            format!("{prefix}.dynamic_quantize"),
            DynamicQuantizeU8,
            &[x],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tract's own arithmetic (tract_onnx::ops::quant), element by element.
    fn tract_reference(xs: &[f32]) -> (Vec<u8>, f32, u8) {
        let (min, max) = xs
            .iter()
            .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let scale = (max - min) / 255.0;
        let zp = (-min / scale).round_ties_even().clamp(0.0, 255.0) as u8;
        let ys = xs
            .iter()
            .map(|&x| (((x / scale).round_ties_even() as i32) + zp as i32).clamp(0, 255) as u8)
            .collect();
        (ys, scale, zp)
    }

    #[test]
    fn every_element_as_tract_quantizes_it_ties_included() {
        // Ties: with min -1.275 and max 1.275, scale is 0.01 and x = k.5 *
        // scale lands on halves (rounded to even); plus a ramp and odd tails.
        let mut xs: Vec<f32> = (0..1027).map(|i| (i as f32 - 511.0) * 0.0025).collect();
        xs.extend([-1.275, 1.275, 0.005, 0.015, -0.005, 0.0, 1e-9]);
        for n in [0, 1, 3, 4, 5, 17, xs.len()] {
            let x = &xs[..n];
            let mut ys = vec![7u8; n];
            let (scale, zp) = DynamicQuantizeU8::run(x, &mut ys);
            let (want, want_scale, want_zp) = tract_reference(x);
            assert_eq!(
                (ys, scale.to_bits(), zp),
                (want, want_scale.to_bits(), want_zp),
                "n = {n}"
            );
        }
    }
}
