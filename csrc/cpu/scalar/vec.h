// The ISA-neutral vector API, portable body: a "vector" of 8 floats worked lane by lane
// (the compiler vectorizes the loops for whatever baseline it builds for).
// Every variant's vec.h offers the same names: kLanes, VF, vzero/vset1/vload/vstore,
// vadd/vsub/vmul/vdiv, vfmadd (a*b+c), vfnmadd (c-a*b), vmax/vmin (x86 semantics: the
// second operand when either is NaN), vround (to nearest even), vpow2 (2^n for integral n
// in [-126, 127]), vzero_below (value, or 0 where x < bound), vsum, vmaxall.
#pragma once

namespace surge::cpu::SURGE_ISA_NS {

constexpr int kLanes = 8;
struct VF {
  float v[kLanes];
};

#define SURGE_LANES(expr) \
  VF r;                   \
  for (int i = 0; i < kLanes; ++i) r.v[i] = (expr); \
  return r

inline VF vzero() { SURGE_LANES(0.0f); }
inline VF vset1(float x) { SURGE_LANES(x); }
inline VF vload(const float* p) { SURGE_LANES(p[i]); }
inline VF vload(const uint16_t* p) { SURGE_LANES(bf16_to_f32(p[i])); }
inline void vstore(float* p, VF a) {
  for (int i = 0; i < kLanes; ++i) p[i] = a.v[i];
}
inline VF vadd(VF a, VF b) { SURGE_LANES(a.v[i] + b.v[i]); }
inline VF vsub(VF a, VF b) { SURGE_LANES(a.v[i] - b.v[i]); }
inline VF vmul(VF a, VF b) { SURGE_LANES(a.v[i] * b.v[i]); }
inline VF vdiv(VF a, VF b) { SURGE_LANES(a.v[i] / b.v[i]); }
inline VF vfmadd(VF a, VF b, VF c) { SURGE_LANES(a.v[i] * b.v[i] + c.v[i]); }
inline VF vfnmadd(VF a, VF b, VF c) { SURGE_LANES(c.v[i] - a.v[i] * b.v[i]); }
inline VF vmax(VF a, VF b) { SURGE_LANES(a.v[i] > b.v[i] ? a.v[i] : b.v[i]); }
inline VF vmin(VF a, VF b) { SURGE_LANES(a.v[i] < b.v[i] ? a.v[i] : b.v[i]); }
inline VF vround(VF a) { SURGE_LANES(std::nearbyint(a.v[i])); }
inline VF vpow2(VF n) {
  VF r;
  for (int i = 0; i < kLanes; ++i) {
    uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n.v[i]) + 127) << 23;
    std::memcpy(&r.v[i], &bits, sizeof(float));
  }
  return r;
}
inline VF vzero_below(VF value, VF x, VF bound) { SURGE_LANES(x.v[i] < bound.v[i] ? 0.0f : value.v[i]); }
#undef SURGE_LANES

inline float vsum(VF a) {
  // Pairwise, as the vector variants add lanes.
  float s4[4];
  for (int i = 0; i < 4; ++i) s4[i] = a.v[i] + a.v[i + 4];
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}
inline float vmaxall(VF a) {
  float m = a.v[0];
  for (int i = 1; i < kLanes; ++i) m = a.v[i] > m ? a.v[i] : m;
  return m;
}

}  // namespace surge::cpu::SURGE_ISA_NS
