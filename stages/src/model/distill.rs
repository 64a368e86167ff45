//! Distillation scoring: the teacher continues each prompt greedily once; every student is
//! then scored on those same sequences by KL(teacher ‖ student) over the full vocabulary at
//! each continued position.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::{Gpt, GptConfig};

/// The teacher's side of an evaluation, computed once.
pub struct Teacher<B: Backend> {
    /// Prompt and continuation but the last token: `[prompts, prompt_len + new − 1]`.
    inputs: Tensor<B, 2, Int>,
    /// The teacher's log-probabilities at the continued positions: `[prompts, new, vocab]`.
    log_probs: Tensor<B, 3>,
    prompt_len: usize,
    new_tokens: usize,
    vocab: usize,
}

/// A GPT-2-architecture `config.json` for a model of this shape (what
/// [`config_from_json`] reads back).
pub fn config_to_json(config: GptConfig) -> serde_json::Value {
    serde_json::json!({
        "model_type": "gpt2",
        "vocab_size": config.vocab,
        "n_positions": config.context,
        "n_layer": config.layers,
        "n_head": config.heads,
        "n_embd": config.dim,
    })
}

/// The shape of a GPT-2-architecture model from its `config.json`.
pub fn config_from_json(config: &serde_json::Value) -> Result<GptConfig, String> {
    if let Some(kind) = config["model_type"].as_str()
        && kind != "gpt2"
    {
        return Err(format!(
            "model_type `{kind}`: this version of gradline scores GPT-2-architecture models only"
        ));
    }
    let field = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| config[*n].as_u64())
            .map(|v| v as usize)
            .ok_or_else(|| format!("config.json has no `{}`", names[0]))
    };
    let config = GptConfig {
        vocab: field(&["vocab_size"])?,
        context: field(&["n_positions", "n_ctx"])?,
        layers: field(&["n_layer"])?,
        heads: field(&["n_head"])?,
        dim: field(&["n_embd"])?,
    };
    if config.heads == 0 || !config.dim.is_multiple_of(config.heads) {
        return Err(format!(
            "n_embd {} is not a multiple of n_head {}",
            config.dim, config.heads
        ));
    }
    Ok(config)
}

/// Continues every prompt (all of one length) by `new_tokens` greedy tokens.
pub fn teach<B: Backend>(
    teacher: &Gpt<B>,
    prompts: &[Vec<u32>],
    new_tokens: usize,
    device: &B::Device,
) -> Result<Teacher<B>, String> {
    let config = teacher.config();
    let prompt_len = prompts.first().map_or(0, Vec::len);
    if prompts.is_empty() || prompt_len == 0 || new_tokens == 0 {
        return Err("no prompts to continue".into());
    }
    if prompts.iter().any(|p| p.len() != prompt_len) {
        return Err("prompts of different lengths".into());
    }
    if prompt_len + new_tokens - 1 > config.context {
        return Err(format!(
            "{prompt_len} prompt tokens and {new_tokens} new ones exceed the teacher's context of {}",
            config.context
        ));
    }
    let count = prompts.len();
    let flat: Vec<i64> = prompts.iter().flatten().map(|&t| i64::from(t)).collect();
    let mut tokens: Tensor<B, 2, Int> =
        Tensor::from_data(TensorData::new(flat, [count, prompt_len]), device);
    for _ in 0..new_tokens {
        let length = tokens.dims()[1];
        let logits = teacher.forward(tokens.clone());
        let next = logits
            .slice([0..count, length - 1..length, 0..config.vocab])
            .reshape([count, config.vocab])
            .argmax(1);
        tokens = Tensor::cat(vec![tokens, next], 1);
    }
    let inputs = tokens.slice([0..count, 0..prompt_len + new_tokens - 1]);
    let log_probs = continued_log_probs(teacher, inputs.clone(), prompt_len, new_tokens);
    Ok(Teacher {
        inputs,
        log_probs,
        prompt_len,
        new_tokens,
        vocab: config.vocab,
    })
}

/// A student's KL(teacher ‖ student) at every continued position, prompt by prompt.
pub fn kl_per_position<B: Backend>(
    teacher: &Teacher<B>,
    student: &Gpt<B>,
) -> Result<Vec<f32>, String> {
    let config = student.config();
    if config.vocab != teacher.vocab {
        return Err(format!(
            "the student's vocabulary ({}) is not the teacher's ({})",
            config.vocab, teacher.vocab
        ));
    }
    if teacher.prompt_len + teacher.new_tokens - 1 > config.context {
        return Err(format!(
            "the student's context ({}) is shorter than the evaluation's sequences",
            config.context
        ));
    }
    let student = continued_log_probs(
        student,
        teacher.inputs.clone(),
        teacher.prompt_len,
        teacher.new_tokens,
    );
    let teacher_probs = teacher.log_probs.clone().exp();
    let kl = (teacher_probs * (teacher.log_probs.clone() - student)).sum_dim(2);
    kl.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| format!("reading the KL values: {e:?}"))
}

/// Log-probabilities at the positions that predict the continuation.
fn continued_log_probs<B: Backend>(
    model: &Gpt<B>,
    inputs: Tensor<B, 2, Int>,
    prompt_len: usize,
    new_tokens: usize,
) -> Tensor<B, 3> {
    let [count, length] = inputs.dims();
    let vocab = model.config().vocab;
    let logits = model.forward(inputs);
    let continued = logits.slice([0..count, prompt_len - 1..length, 0..vocab]);
    debug_assert_eq!(continued.dims()[1], new_tokens);
    log_softmax(continued, 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Cpu;

    fn model(seed: u64) -> Gpt<Cpu> {
        let device = Default::default();
        <Cpu as Backend>::seed(&device, seed);
        GptConfig::tiny().init(&device)
    }

    #[test]
    fn the_teacher_is_its_own_perfect_student_and_a_stranger_is_not() {
        let device = Default::default();
        let teacher_model = model(1);
        let prompts = vec![vec![10, 20, 30, 40], vec![50, 60, 70, 80]];
        let teacher = teach(&teacher_model, &prompts, 6, &device).unwrap();
        let same = kl_per_position(&teacher, &teacher_model).unwrap();
        assert_eq!(same.len(), 2 * 6);
        assert!(same.iter().all(|k| k.abs() < 1e-4), "{same:?}");
        let other = kl_per_position(&teacher, &model(2)).unwrap();
        assert!(other.iter().all(|k| *k > 0.0), "{other:?}");
    }

    #[test]
    fn gpt2_configs_are_read_and_others_refused() {
        let config = serde_json::json!({
            "model_type": "gpt2", "vocab_size": 257, "n_positions": 64,
            "n_layer": 2, "n_head": 4, "n_embd": 64
        });
        assert_eq!(config_from_json(&config).unwrap(), GptConfig::tiny());
        let llama = serde_json::json!({ "model_type": "llama" });
        assert!(config_from_json(&llama).unwrap_err().contains("GPT-2"));
    }
}
