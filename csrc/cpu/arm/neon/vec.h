// The ISA-neutral vector API (see cpu/scalar/vec.h) on AArch64 NEON: 4 float lanes in a q register.
#pragma once

namespace surge::cpu::SURGE_ISA_NS {

constexpr int kLanes = 4;
struct VF {
  float32x4_t v;
};

inline VF vzero() { return {vdupq_n_f32(0.0f)}; }
inline VF vset1(float x) { return {vdupq_n_f32(x)}; }
inline VF vload(const float* p) { return {vld1q_f32(p)}; }
inline VF vload(const uint16_t* p) { return {vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16))}; }
inline void vstore(float* p, VF a) { vst1q_f32(p, a.v); }
inline VF vadd(VF a, VF b) { return {vaddq_f32(a.v, b.v)}; }
inline VF vsub(VF a, VF b) { return {vsubq_f32(a.v, b.v)}; }
inline VF vmul(VF a, VF b) { return {vmulq_f32(a.v, b.v)}; }
inline VF vdiv(VF a, VF b) { return {vdivq_f32(a.v, b.v)}; }
inline VF vfmadd(VF a, VF b, VF c) { return {vfmaq_f32(c.v, a.v, b.v)}; }
inline VF vfnmadd(VF a, VF b, VF c) { return {vfmsq_f32(c.v, a.v, b.v)}; }
// x86 semantics (the second operand when either is NaN): a > b ? a : b.
inline VF vmax(VF a, VF b) { return {vbslq_f32(vcgtq_f32(a.v, b.v), a.v, b.v)}; }
inline VF vmin(VF a, VF b) { return {vbslq_f32(vcltq_f32(a.v, b.v), a.v, b.v)}; }
inline VF vround(VF a) { return {vrndnq_f32(a.v)}; }
inline VF vpow2(VF n) {
  int32x4_t biased = vaddq_s32(vcvtnq_s32_f32(n.v), vdupq_n_s32(127));
  return {vreinterpretq_f32_s32(vshlq_n_s32(biased, 23))};
}
inline VF vzero_below(VF value, VF x, VF bound) {
  return {vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(value.v), vcltq_f32(x.v, bound.v)))};
}
inline float vsum(VF a) {
  float32x2_t s = vadd_f32(vget_low_f32(a.v), vget_high_f32(a.v));
  return vget_lane_f32(vpadd_f32(s, s), 0);
}
inline float vmaxall(VF a) {
  float32x2_t m = vpmax_f32(vget_low_f32(a.v), vget_high_f32(a.v));
  return vget_lane_f32(vpmax_f32(m, m), 0);
}

}  // namespace surge::cpu::SURGE_ISA_NS
