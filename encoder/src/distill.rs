//! Distilling the static token table from the model, as model2vec does (ARCHITECTURE.md,
//! "Embeddings"): each vocabulary token goes through the encoder as `[CLS] token [SEP]` and its
//! output is mean-pooled; the vectors are reduced by PCA to the table's width, each token's row
//! is weighted down the more frequent the token (Zipf's law over the vocabulary's order, which
//! is by frequency), and the rows are quantised to int8.

use pubsearch_shared::embed::table::StaticTable;

use crate::bert::Bert;

/// How the table is made.
#[derive(Debug, Clone)]
pub struct DistillOptions {
    /// Width of the table's rows (PCA components kept).
    pub dims: usize,
    /// The `[CLS]` and `[SEP]` ids the model wraps a text in.
    pub cls: u32,
    pub sep: u32,
    /// Tokens pushed through the model at once.
    pub batch: usize,
    /// Threads sharing the vocabulary.
    pub threads: usize,
    /// The smoothing of the frequency weight `a / (a + p)`.
    pub sif: f64,
}

impl Default for DistillOptions {
    fn default() -> Self {
        DistillOptions {
            dims: 256,
            cls: 101,
            sep: 102,
            batch: 256,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            sif: 1e-4,
        }
    }
}

/// The model's mean-pooled output for each of `ids`, alone between `[CLS]` and `[SEP]`.
pub fn token_vectors(bert: &Bert, ids: &[u32], options: &DistillOptions) -> Vec<Vec<f32>> {
    let threads = options.threads.max(1);
    let share = ids.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = ids
            .chunks(share)
            .map(|part| {
                scope.spawn(move || {
                    let mut out = Vec::with_capacity(part.len());
                    for batch in part.chunks(options.batch.max(1)) {
                        let sequences: Vec<[u32; 3]> = batch
                            .iter()
                            .map(|&id| [options.cls, id, options.sep])
                            .collect();
                        let views: Vec<&[u32]> = sequences.iter().map(|s| &s[..]).collect();
                        out.extend(bert.mean_pooled(&views));
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("a distilling thread panicked"))
            .collect()
    })
}

/// The table for `ids` (their rows in that order): their token vectors, reduced by PCA,
/// weighted by Zipf rank (an id's rank is its position in the vocabulary) and quantised.
pub fn distill(bert: &Bert, ids: &[u32], options: &DistillOptions) -> StaticTable {
    let vectors = token_vectors(bert, ids, options);
    let reduced = pca(&vectors, options.dims);
    // Zipf: p(rank) = 1 / (rank · H(n)); the weight is a / (a + p).
    let n = ids.len().max(1);
    let harmonic: f64 = (1..=n).map(|rank| 1.0 / rank as f64).sum();
    let weighted: Vec<Vec<f32>> = reduced
        .into_iter()
        .zip(ids)
        .map(|(row, &id)| {
            let p = 1.0 / ((id as f64 + 1.0) * harmonic);
            let weight = (options.sif / (options.sif + p)) as f32;
            row.into_iter().map(|v| v * weight).collect()
        })
        .collect();
    StaticTable::quantize(&weighted, options.dims)
}

/// `rows` centred and projected onto their `dims` principal components (largest variance first).
pub fn pca(rows: &[Vec<f32>], dims: usize) -> Vec<Vec<f32>> {
    let Some(width) = rows.first().map(Vec::len) else {
        return Vec::new();
    };
    let dims = dims.min(width);
    let count = rows.len() as f64;
    let mut mean = vec![0.0f64; width];
    for row in rows {
        mean.iter_mut()
            .zip(row)
            .for_each(|(m, v)| *m += f64::from(*v) / count);
    }
    let mut covariance = vec![0.0f64; width * width];
    for row in rows {
        let centred: Vec<f64> = row
            .iter()
            .zip(&mean)
            .map(|(v, m)| f64::from(*v) - m)
            .collect();
        for i in 0..width {
            let ci = centred[i];
            let line = &mut covariance[i * width..][..width];
            for (cell, cj) in line.iter_mut().zip(&centred).skip(i) {
                *cell += ci * cj;
            }
        }
    }
    for i in 0..width {
        for j in 0..i {
            covariance[i * width + j] = covariance[j * width + i];
        }
    }
    let (values, vectors) = symmetric_eigen(covariance, width);
    let mut order: Vec<usize> = (0..width).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    let components: Vec<Vec<f64>> = order[..dims]
        .iter()
        .map(|&k| (0..width).map(|i| vectors[i * width + k]).collect())
        .collect();
    rows.iter()
        .map(|row| {
            let centred: Vec<f64> = row
                .iter()
                .zip(&mean)
                .map(|(v, m)| f64::from(*v) - m)
                .collect();
            components
                .iter()
                .map(|component| {
                    component
                        .iter()
                        .zip(&centred)
                        .map(|(c, v)| c * v)
                        .sum::<f64>() as f32
                })
                .collect()
        })
        .collect()
}

/// Eigenvalues and eigenvectors (as the columns of a row-major `n × n`) of a symmetric matrix,
/// by cyclic Jacobi rotations.
fn symmetric_eigen(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0; n * n];
    (0..n).for_each(|i| v[i * n + i] = 1.0);
    let total: f64 = a.iter().map(|x| x * x).sum::<f64>().max(f64::MIN_POSITIVE);
    for _sweep in 0..50 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        if off <= 1e-22 * total {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let sign = if theta >= 0.0 { 1.0 } else { -1.0 };
                let t = sign / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::{pca, symmetric_eigen};

    #[test]
    fn jacobi_finds_the_eigenpairs_of_a_symmetric_matrix() {
        let a = vec![4.0, 1.0, 2.0, 1.0, 3.0, 0.5, 2.0, 0.5, 1.0];
        let (values, vectors) = symmetric_eigen(a.clone(), 3);
        for k in 0..3 {
            let column: Vec<f64> = (0..3).map(|i| vectors[i * 3 + k]).collect();
            for i in 0..3 {
                let av: f64 = (0..3).map(|j| a[i * 3 + j] * column[j]).sum();
                assert!((av - values[k] * column[i]).abs() < 1e-9, "A·v = λ·v");
            }
        }
        assert!(
            (values.iter().sum::<f64>() - 8.0).abs() < 1e-9,
            "the trace is kept"
        );
    }

    #[test]
    fn pca_keeps_the_direction_of_most_variance_first() {
        // Points along (1, 1, 0) with a little noise across it.
        let rows: Vec<Vec<f32>> = (0..50)
            .map(|i| {
                let t = i as f32 - 25.0;
                let e = if i % 2 == 0 { 0.1 } else { -0.1 };
                vec![t + e, t - e, e]
            })
            .collect();
        let reduced = pca(&rows, 1);
        let spread = |k: usize| reduced.iter().map(|r| r[k].abs()).fold(0.0f32, f32::max);
        assert!(spread(0) > 30.0, "the first component spans the line");
        let full = pca(&rows, 3);
        assert!(full.iter().all(|r| r[2].abs() < 0.2 && r[1].abs() < 0.5));
    }
}
