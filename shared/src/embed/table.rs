//! The static token table semantic search embeds with (ARCHITECTURE.md, "Embeddings"): one
//! int8 row per vocabulary token, with a scale, distilled natively from the model. A text's
//! vector is the normalised mean of its tokens' rows, so embedding a query at the edge costs a
//! few row reads and additions, and the same code embeds documents natively.

/// A vocabulary's vectors: `rows × dims` int8 values, each row with its scale.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticTable {
    dims: usize,
    values: Vec<i8>,
    scales: Vec<f32>,
}

impl StaticTable {
    /// Quantises `rows` (each `dims` wide) to int8, each row scaled by its largest magnitude.
    pub fn quantize(rows: &[Vec<f32>], dims: usize) -> Self {
        let mut values = Vec::with_capacity(rows.len() * dims);
        let mut scales = Vec::with_capacity(rows.len());
        for row in rows {
            assert_eq!(row.len(), dims, "every row is dims wide");
            let largest = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = if largest > 0.0 { largest / 127.0 } else { 1.0 };
            values.extend(
                row.iter()
                    .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8),
            );
            scales.push(scale);
        }
        StaticTable {
            dims,
            values,
            scales,
        }
    }

    /// Width of a vector.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Rows (vocabulary entries).
    pub fn rows(&self) -> usize {
        self.scales.len()
    }

    /// Row `id`, dequantised; `None` past the table.
    pub fn row(&self, id: u32) -> Option<Vec<f32>> {
        let id = id as usize;
        let scale = *self.scales.get(id)?;
        Some(
            self.values[id * self.dims..][..self.dims]
                .iter()
                .map(|&v| f32::from(v) * scale)
                .collect(),
        )
    }

    /// The unit-length mean of `ids`' rows (ids past the table are skipped); `None` when none
    /// is in it or they cancel out.
    pub fn embed(&self, ids: &[u32]) -> Option<Vec<f32>> {
        let mut sum = vec![0.0f32; self.dims];
        let mut counted = 0;
        for row in ids.iter().filter_map(|&id| self.row(id)) {
            sum.iter_mut().zip(&row).for_each(|(s, v)| *s += v);
            counted += 1;
        }
        let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt();
        (counted > 0 && norm > 0.0).then(|| sum.into_iter().map(|v| v / norm).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::StaticTable;

    #[test]
    fn quantised_rows_come_back_within_a_step_and_texts_average_them() {
        let rows = vec![
            vec![1.0, -0.5, 0.25],
            vec![0.0, 0.0, 0.0],
            vec![-2.0, 2.0, 1.0],
        ];
        let table = StaticTable::quantize(&rows, 3);
        assert_eq!((table.rows(), table.dims()), (3, 3));
        for (id, row) in rows.iter().enumerate() {
            let back = table.row(id as u32).unwrap();
            let step = row.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
            assert!(
                back.iter()
                    .zip(row)
                    .all(|(b, r)| (b - r).abs() <= step / 2.0 + 1e-6)
            );
        }
        let v = table.embed(&[0, 2, 99]).unwrap();
        assert!((v.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(v[1] > 0.0 && v[0] < 0.0, "the mean of rows 0 and 2: {v:?}");
        assert_eq!(table.embed(&[1]), None, "a zero vector has no direction");
        assert_eq!(table.embed(&[99]), None);
    }
}
