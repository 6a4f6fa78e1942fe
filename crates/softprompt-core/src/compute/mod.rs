//! The compute layer: f32 tensors and the CPU kernels every model pass runs on. Nothing here
//! knows about models, prompts or training.
//!
//! - [`tensor`]: a dense row-major f32 tensor with its shape.
//! - [`kernels`]: matrix products, RMSNorm, RoPE, gated activations, softmax, each with its
//!   backward.
//! - [`bf16`]: bf16 matrix products (AMX, AVX512-BF16, portable) on packed weights.
//! - [`quant`]: GGML block types and their dequantization.
//! - [`weight`]: a frozen matrix as f32, GGML blocks or packed bf16, and its two products.

pub mod bf16;
pub mod kernels;
pub mod quant;
pub mod tensor;
pub mod weight;

pub use tensor::Tensor;
