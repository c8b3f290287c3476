"""aligner_jax: multi-vector retrieval as sparse alignment (ALIGNER), learnable late-interaction
scorers (LITE) and dual-encoder distillation, in JAX/Flax.

Subpackages are imported explicitly (`from aligner_jax import scoring`); importing the top-level
package stays cheap.
"""
