//! The embedding model's forward pass (BERT encoder, as all-MiniLM-L6-v2 is): token, position
//! and segment embeddings, then layers of self-attention and feed-forward, each with a residual
//! connection and layer norm. Weights come from the model's `model.safetensors` and its
//! `config.json`; matrix products are `matrixmultiply`'s SGEMM. Native only: it distils the
//! static token table the edge embeds with (ARCHITECTURE.md, "Embeddings").

use std::path::Path;

use safetensors::SafeTensors;

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Format { path: String, reason: String },
}

/// What of `config.json` the forward pass needs.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Config {
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub intermediate_size: usize,
    pub layer_norm_eps: f32,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    pub hidden_act: String,
}

/// `y = x · Wᵀ + b` for a weight stored `[out, in]`, as PyTorch stores it.
struct Linear {
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

impl Linear {
    /// `rows` rows of `x` (each `inputs` wide) through the layer.
    fn apply(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut y = vec![0.0; rows * self.outputs];
        // SAFETY: the pointers cover `rows × inputs`, `outputs × inputs` and `rows × outputs`
        // f32s (checked when loading and by the callers' shapes), with the strides given.
        unsafe {
            matrixmultiply::sgemm(
                rows,
                self.inputs,
                self.outputs,
                1.0,
                x.as_ptr(),
                self.inputs as isize,
                1,
                self.weight.as_ptr(),
                1,
                self.inputs as isize,
                0.0,
                y.as_mut_ptr(),
                self.outputs as isize,
                1,
            );
        }
        for row in y.chunks_exact_mut(self.outputs) {
            for (value, bias) in row.iter_mut().zip(&self.bias) {
                *value += bias;
            }
        }
        y
    }
}

struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    fn apply(&self, x: &mut [f32]) {
        let width = self.weight.len();
        for row in x.chunks_exact_mut(width) {
            let mean = row.iter().sum::<f32>() / width as f32;
            let variance = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
            let scale = 1.0 / (variance + self.eps).sqrt();
            for ((value, weight), bias) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
                *value = (*value - mean) * scale * weight + bias;
            }
        }
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// A loaded BERT encoder.
pub struct Bert {
    config: Config,
    word: Vec<f32>,
    position: Vec<f32>,
    segment: Vec<f32>,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
}

impl Bert {
    /// Loads `config.json` and `model.safetensors` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| ModelError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        let config_path = dir.join("config.json").display().to_string();
        let config: Config =
            serde_json::from_slice(&read("config.json")?).map_err(|e| ModelError::Format {
                path: config_path.clone(),
                reason: e.to_string(),
            })?;
        if config.hidden_act != "gelu"
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return Err(ModelError::Format {
                path: config_path,
                reason: format!(
                    "expected a gelu BERT whose hidden size splits into its heads, got {config:?}"
                ),
            });
        }
        let weights_path = dir.join("model.safetensors").display().to_string();
        let bytes = read("model.safetensors")?;
        let tensors = SafeTensors::deserialize(&bytes).map_err(|e| ModelError::Format {
            path: weights_path.clone(),
            reason: e.to_string(),
        })?;
        let tensor = |name: &str, len: usize| -> Result<Vec<f32>, ModelError> {
            let format = |reason: String| ModelError::Format {
                path: weights_path.clone(),
                reason: format!("{name}: {reason}"),
            };
            // Some exports prefix every name with the model's.
            let view = tensors
                .tensor(name)
                .or_else(|_| tensors.tensor(&format!("bert.{name}")))
                .map_err(|e| format(e.to_string()))?;
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(format(format!("is {:?}, not F32", view.dtype())));
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if values.len() != len {
                return Err(format(format!(
                    "has {} values, expected {len}",
                    values.len()
                )));
            }
            Ok(values)
        };
        let (hidden, inner) = (config.hidden_size, config.intermediate_size);
        let linear = |name: &str, inputs: usize, outputs: usize| -> Result<Linear, ModelError> {
            Ok(Linear {
                weight: tensor(&format!("{name}.weight"), inputs * outputs)?,
                bias: tensor(&format!("{name}.bias"), outputs)?,
                inputs,
                outputs,
            })
        };
        let norm = |name: &str| -> Result<LayerNorm, ModelError> {
            Ok(LayerNorm {
                weight: tensor(&format!("{name}.weight"), hidden)?,
                bias: tensor(&format!("{name}.bias"), hidden)?,
                eps: config.layer_norm_eps,
            })
        };
        let layers = (0..config.num_hidden_layers)
            .map(|n| {
                let at = |part: &str| format!("encoder.layer.{n}.{part}");
                Ok(Layer {
                    query: linear(&at("attention.self.query"), hidden, hidden)?,
                    key: linear(&at("attention.self.key"), hidden, hidden)?,
                    value: linear(&at("attention.self.value"), hidden, hidden)?,
                    attention_out: linear(&at("attention.output.dense"), hidden, hidden)?,
                    attention_norm: norm(&at("attention.output.LayerNorm"))?,
                    intermediate: linear(&at("intermediate.dense"), hidden, inner)?,
                    output: linear(&at("output.dense"), inner, hidden)?,
                    output_norm: norm(&at("output.LayerNorm"))?,
                })
            })
            .collect::<Result<_, ModelError>>()?;
        Ok(Bert {
            word: tensor(
                "embeddings.word_embeddings.weight",
                config.vocab_size * hidden,
            )?,
            position: tensor(
                "embeddings.position_embeddings.weight",
                config.max_position_embeddings * hidden,
            )?,
            segment: tensor("embeddings.token_type_embeddings.weight", 2 * hidden)?,
            embedding_norm: norm("embeddings.LayerNorm")?,
            layers,
            config,
        })
    }

    /// Width of the hidden states (and of a pooled vector).
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// The mean of the last hidden states of each sequence (all of one length, each within the
    /// model's positions and vocabulary): sentence-transformers' mean pooling, unnormalised.
    pub fn mean_pooled(&self, sequences: &[&[u32]]) -> Vec<Vec<f32>> {
        let Some(length) = sequences.first().map(|s| s.len()) else {
            return Vec::new();
        };
        assert!(
            sequences.iter().all(|s| s.len() == length)
                && length <= self.config.max_position_embeddings,
            "sequences of one length, within the model's positions"
        );
        let hidden = self.config.hidden_size;
        let states = self.encode(sequences, length);
        states
            .chunks_exact(length * hidden)
            .map(|sequence| {
                let mut pooled = vec![0.0; hidden];
                for state in sequence.chunks_exact(hidden) {
                    for (sum, value) in pooled.iter_mut().zip(state) {
                        *sum += value;
                    }
                }
                pooled.iter_mut().for_each(|v| *v /= length as f32);
                pooled
            })
            .collect()
    }

    /// The last hidden states, `sequences.len() × length × hidden`.
    fn encode(&self, sequences: &[&[u32]], length: usize) -> Vec<f32> {
        let hidden = self.config.hidden_size;
        let rows = sequences.len() * length;
        let mut x = Vec::with_capacity(rows * hidden);
        for sequence in sequences {
            for (at, &id) in sequence.iter().enumerate() {
                let word = &self.word[id as usize * hidden..][..hidden];
                let position = &self.position[at * hidden..][..hidden];
                let segment = &self.segment[..hidden];
                x.extend(
                    word.iter()
                        .zip(position)
                        .zip(segment)
                        .map(|((w, p), s)| w + p + s),
                );
            }
        }
        self.embedding_norm.apply(&mut x);
        for layer in &self.layers {
            let context = self.attention(layer, &x, sequences.len(), length);
            let mut attended = layer.attention_out.apply(&context, rows);
            attended.iter_mut().zip(&x).for_each(|(a, r)| *a += r);
            layer.attention_norm.apply(&mut attended);
            let mut inner = layer.intermediate.apply(&attended, rows);
            inner.iter_mut().for_each(|v| *v = gelu(*v));
            let mut out = layer.output.apply(&inner, rows);
            out.iter_mut().zip(&attended).for_each(|(o, r)| *o += r);
            layer.output_norm.apply(&mut out);
            x = out;
        }
        x
    }

    /// Multi-head self-attention over each sequence (no padding: every position attends to
    /// every other of its sequence).
    fn attention(&self, layer: &Layer, x: &[f32], sequences: usize, length: usize) -> Vec<f32> {
        let hidden = self.config.hidden_size;
        let heads = self.config.num_attention_heads;
        let width = hidden / heads;
        let rows = sequences * length;
        let (q, k, v) = (
            layer.query.apply(x, rows),
            layer.key.apply(x, rows),
            layer.value.apply(x, rows),
        );
        let scale = 1.0 / (width as f32).sqrt();
        let mut context = vec![0.0; rows * hidden];
        let mut scores = vec![0.0; length];
        for s in 0..sequences {
            for head in 0..heads {
                let column = head * width;
                for i in 0..length {
                    let qi = &q[(s * length + i) * hidden + column..][..width];
                    for (j, score) in scores.iter_mut().enumerate() {
                        let kj = &k[(s * length + j) * hidden + column..][..width];
                        *score = qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
                    }
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut total = 0.0;
                    for score in scores.iter_mut() {
                        *score = (*score - max).exp();
                        total += *score;
                    }
                    let out = &mut context[(s * length + i) * hidden + column..][..width];
                    for (j, score) in scores.iter().enumerate() {
                        let vj = &v[(s * length + j) * hidden + column..][..width];
                        let weight = score / total;
                        for (o, value) in out.iter_mut().zip(vj) {
                            *o += weight * value;
                        }
                    }
                }
            }
        }
        context
    }
}

/// GELU with the exact error function, as BERT's `gelu` is.
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x / std::f32::consts::SQRT_2))
}
