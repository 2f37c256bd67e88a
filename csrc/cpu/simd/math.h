// Vector math over the ISA-neutral API (cpu/<arch>/<isa>/vec.h): e^x, cap * tanh(x / cap).
#pragma once

namespace surge::cpu::SURGE_ISA_NS {

// e^x per lane: x = n ln2 + r with |r| <= ln2/2, e^r by a degree-6 Taylor polynomial
// (relative error ~1e-7), 2^n put straight into the exponent bits. Lanes below -87
// (including -inf) give exactly 0, so masked scores carry no weight; NaN stays NaN.
inline VF vexp(VF x) {
  const VF lower = vset1(-87.0f);
  // Operand order keeps NaN lanes NaN (vmax/vmin return the second operand on NaN).
  VF xc = vmin(vset1(88.0f), vmax(lower, x));
  VF n = vround(vmul(xc, vset1(1.44269504088896341f)));
  // ln2 split in a high part exact in float and a low correction (Cody-Waite reduction).
  VF r = vfnmadd(n, vset1(0.693145751953125f), xc);
  r = vfnmadd(n, vset1(1.428606765330187045e-06f), r);
  VF p = vset1(1.0f / 720.0f);
  p = vfmadd(p, r, vset1(1.0f / 120.0f));
  p = vfmadd(p, r, vset1(1.0f / 24.0f));
  p = vfmadd(p, r, vset1(1.0f / 6.0f));
  p = vfmadd(p, r, vset1(0.5f));
  p = vfmadd(p, r, vset1(1.0f));
  p = vfmadd(p, r, vset1(1.0f));
  return vzero_below(vmul(p, vpow2(n)), x, lower);
}

inline float exp_scalar(float x) {
  float lanes[kLanes];
  vstore(lanes, vexp(vset1(x)));
  return lanes[0];
}

}  // namespace surge::cpu::SURGE_ISA_NS
