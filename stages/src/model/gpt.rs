//! A decoder-only transformer: token and position embeddings, pre-LayerNorm blocks with
//! causal self-attention and a GELU MLP, a final LayerNorm, and a head tied to the token
//! embedding. Parameter names follow GPT-2's (`wte`, `wpe`, `h.N.ln_1`, `h.N.attn.c_attn`,
//! `h.N.attn.c_proj`, `h.N.ln_2`, `h.N.mlp.c_fc`, `h.N.mlp.c_proj`, `ln_f`).

use burn::module::Module;
use burn::nn::Initializer;
use burn::nn::attention::generate_autoregressive_mask;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

/// A model's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GptConfig {
    pub vocab: usize,
    pub context: usize,
    pub layers: usize,
    pub heads: usize,
    pub dim: usize,
}

impl GptConfig {
    /// Byte vocabulary, 2 layers, 64 dims, 4 heads, context 64: tests and the demo network.
    pub fn tiny() -> Self {
        Self {
            vocab: 257,
            context: 64,
            layers: 2,
            heads: 4,
            dim: 64,
        }
    }

    /// 6 layers, 384 dims, 6 heads, context 256, cl100k_base vocabulary.
    pub fn nanogpt_10m() -> Self {
        Self {
            vocab: 100_277,
            context: 256,
            layers: 6,
            heads: 6,
            dim: 384,
        }
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> Gpt<B> {
        let blocks = (0..self.layers).map(|_| Block::new(self, device)).collect();
        Gpt {
            wte: EmbeddingConfig::new(self.vocab, self.dim)
                .with_initializer(normal(0.02))
                .init(device),
            wpe: EmbeddingConfig::new(self.context, self.dim)
                .with_initializer(normal(0.01))
                .init(device),
            h: blocks,
            ln_f: LayerNormConfig::new(self.dim).init(device),
            config: *self,
        }
    }
}

/// GPT-2's initialization: normal with a small standard deviation.
fn normal(std: f64) -> Initializer {
    Initializer::Normal { mean: 0.0, std }
}

#[derive(Module, Debug)]
pub struct Gpt<B: Backend> {
    pub wte: Embedding<B>,
    pub wpe: Embedding<B>,
    pub h: Vec<Block<B>>,
    pub ln_f: LayerNorm<B>,
    #[module(skip)]
    pub config: GptConfig,
}

#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub ln_1: LayerNorm<B>,
    pub attn: Attention<B>,
    pub ln_2: LayerNorm<B>,
    pub mlp: Mlp<B>,
}

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub c_attn: Linear<B>,
    pub c_proj: Linear<B>,
    pub heads: usize,
}

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub c_fc: Linear<B>,
    pub c_proj: Linear<B>,
}

impl<B: Backend> Block<B> {
    fn new(c: &GptConfig, device: &B::Device) -> Self {
        let residual = normal(0.02 / (2.0 * c.layers as f64).sqrt());
        let linear = |i: usize, o: usize, init: Initializer| {
            LinearConfig::new(i, o).with_initializer(init).init(device)
        };
        Self {
            ln_1: LayerNormConfig::new(c.dim).init(device),
            attn: Attention {
                c_attn: linear(c.dim, 3 * c.dim, normal(0.02)),
                c_proj: linear(c.dim, c.dim, residual.clone()),
                heads: c.heads,
            },
            ln_2: LayerNormConfig::new(c.dim).init(device),
            mlp: Mlp {
                c_fc: linear(c.dim, 4 * c.dim, normal(0.02)),
                c_proj: linear(4 * c.dim, c.dim, residual),
            },
        }
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = x.clone() + self.attn.forward(self.ln_1.forward(x));
        x.clone()
            + self
                .mlp
                .c_proj
                .forward(gelu(self.mlp.c_fc.forward(self.ln_2.forward(x))))
    }
}

impl<B: Backend> Attention<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, dim] = x.dims();
        let head_dim = dim / self.heads;
        let qkv = self.c_attn.forward(x);
        let split = |i: usize| {
            qkv.clone()
                .narrow(2, i * dim, dim)
                .reshape([batch, seq, self.heads, head_dim])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (split(0), split(1), split(2));
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .div_scalar((head_dim as f32).sqrt());
        let mask =
            generate_autoregressive_mask::<B>(batch, seq, &scores.device()).unsqueeze_dim::<4>(1);
        let weights = softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3);
        let y = weights.matmul(v).swap_dims(1, 2).reshape([batch, seq, dim]);
        self.c_proj.forward(y)
    }
}

impl<B: Backend> Gpt<B> {
    pub fn config(&self) -> GptConfig {
        self.config
    }

    /// Logits for each position: `[batch, seq, vocab]`.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq] = tokens.dims();
        let device = tokens.device();
        let positions = Tensor::<B, 1, Int>::arange(0..seq as i64, &device)
            .reshape([1, seq])
            .repeat_dim(0, batch);
        let mut x = self.wte.forward(tokens) + self.wpe.forward(positions);
        for block in &self.h {
            x = block.forward(x);
        }
        let x = self.ln_f.forward(x);
        let head = self.wte.weight.val().transpose().unsqueeze_dim::<3>(0);
        x.matmul(head)
    }

    /// Mean next-token cross-entropy of `tokens[:, :-1] → tokens[:, 1:]`.
    pub fn loss(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 1> {
        let [batch, seq] = tokens.dims();
        let inputs = tokens.clone().narrow(1, 0, seq - 1);
        let targets = tokens.narrow(1, 1, seq - 1).reshape([batch * (seq - 1)]);
        let logits = self.forward(inputs);
        let vocab = logits.dims()[2];
        let logits = logits.reshape([batch * (seq - 1), vocab]);
        CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits, targets)
    }
}
