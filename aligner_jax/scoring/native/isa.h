// The instruction-set extensions a -march=native build was compiled for, as the space-separated
// /proc/cpuinfo flag names the loader checks against the running CPU (a library copied to an
// older CPU would fault on its first wide instruction otherwise).
#ifndef ALIGNER_JAX_NATIVE_ISA_H_
#define ALIGNER_JAX_NATIVE_ISA_H_

#ifdef __AVX512F__
#define ALIGNER_ISA_AVX512F "avx512f "
#else
#define ALIGNER_ISA_AVX512F ""
#endif
#ifdef __AVX512BW__
#define ALIGNER_ISA_AVX512BW "avx512bw "
#else
#define ALIGNER_ISA_AVX512BW ""
#endif
#ifdef __AVX512VL__
#define ALIGNER_ISA_AVX512VL "avx512vl "
#else
#define ALIGNER_ISA_AVX512VL ""
#endif
#ifdef __AVX512DQ__
#define ALIGNER_ISA_AVX512DQ "avx512dq "
#else
#define ALIGNER_ISA_AVX512DQ ""
#endif
#ifdef __AVX512FP16__
#define ALIGNER_ISA_AVX512FP16 "avx512_fp16 "
#else
#define ALIGNER_ISA_AVX512FP16 ""
#endif
#ifdef __AVX2__
#define ALIGNER_ISA_AVX2 "avx2 "
#else
#define ALIGNER_ISA_AVX2 ""
#endif
#ifdef __FMA__
#define ALIGNER_ISA_FMA "fma "
#else
#define ALIGNER_ISA_FMA ""
#endif
#ifdef __BMI2__
#define ALIGNER_ISA_BMI2 "bmi2 "
#else
#define ALIGNER_ISA_BMI2 ""
#endif
#ifdef __F16C__
#define ALIGNER_ISA_F16C "f16c "
#else
#define ALIGNER_ISA_F16C ""
#endif

#define ALIGNER_REQUIRED_ISA                                                    \
  ALIGNER_ISA_AVX512F ALIGNER_ISA_AVX512BW ALIGNER_ISA_AVX512VL                 \
      ALIGNER_ISA_AVX512DQ ALIGNER_ISA_AVX512FP16 ALIGNER_ISA_AVX2 ALIGNER_ISA_FMA \
          ALIGNER_ISA_BMI2 ALIGNER_ISA_F16C

#endif  // ALIGNER_JAX_NATIVE_ISA_H_
