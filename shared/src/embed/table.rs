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
        let (scale, values) = self.quantized(id)?;
        Some(values.iter().map(|&v| f32::from(v) * scale).collect())
    }

    /// Row `id` as stored: its scale and int8 values.
    pub fn quantized(&self, id: u32) -> Option<(f32, &[i8])> {
        let id = id as usize;
        let scale = *self.scales.get(id)?;
        Some((scale, &self.values[id * self.dims..][..self.dims]))
    }

    /// A table from its rows as stored (see [`StaticTable::quantized`]).
    pub fn from_quantized<'a>(
        dims: usize,
        rows: impl IntoIterator<Item = (f32, &'a [i8])>,
    ) -> Option<Self> {
        let (mut values, mut scales) = (Vec::new(), Vec::new());
        for (scale, row) in rows {
            if row.len() != dims {
                return None;
            }
            values.extend_from_slice(row);
            scales.push(scale);
        }
        Some(StaticTable {
            dims,
            values,
            scales,
        })
    }

    /// The unit-length mean of `ids`' rows (ids past the table are skipped); `None` when none
    /// is in it or they cancel out.
    pub fn embed(&self, ids: &[u32]) -> Option<Vec<f32>> {
        mean_of(self.dims, ids.iter().map(|&id| self.quantized(id)))
    }
}

/// The unit-length mean of the rows given (`None` entries are skipped): the one definition of a
/// text's vector, whether its rows come from a table in memory or a snapshot's `embed_rows`, so
/// both sides compute the same floats in the same order.
pub fn mean_of<'a>(
    dims: usize,
    rows: impl IntoIterator<Item = Option<(f32, &'a [i8])>>,
) -> Option<Vec<f32>> {
    let mut sum = vec![0.0f32; dims];
    let mut counted = 0;
    for (scale, values) in rows.into_iter().flatten() {
        sum.iter_mut()
            .zip(values)
            .for_each(|(s, &v)| *s += f32::from(v) * scale);
        counted += 1;
    }
    let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt();
    (counted > 0 && norm > 0.0).then(|| sum.into_iter().map(|v| v / norm).collect())
}

/// A vector quantised for storage: int8 values scaled by the largest magnitude, the scale as
/// four little-endian bytes after them (260 bytes for 256 dimensions).
pub fn pack(vector: &[f32]) -> Vec<u8> {
    let largest = vector.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = if largest > 0.0 { largest / 127.0 } else { 1.0 };
    let values: Vec<i8> = vector
        .iter()
        .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8)
        .collect();
    pack_quantized(scale, &values)
}

/// Values already quantised, with their scale, in [`pack`]'s layout (a table's rows are stored
/// so in a snapshot).
pub fn pack_quantized(scale: f32, values: &[i8]) -> Vec<u8> {
    let mut out: Vec<u8> = values.iter().map(|&v| v as u8).collect();
    out.extend_from_slice(&scale.to_le_bytes());
    out
}

/// A [`pack`]ed vector's scale and values; `None` when it is not `dims` wide.
pub fn unpack_quantized(
    packed: &[u8],
    dims: usize,
) -> Option<(f32, impl Iterator<Item = i8> + Clone)> {
    let (values, scale) = packed.split_at_checked(dims)?;
    let scale = f32::from_le_bytes(scale.try_into().ok()?);
    Some((scale, values.iter().map(|&v| v as i8)))
}

/// The dot product of `query` with a [`pack`]ed vector; `None` when the widths differ.
pub fn dot_packed(query: &[f32], packed: &[u8]) -> Option<f32> {
    let (scale, values) = unpack_quantized(packed, query.len())?;
    let sum: f32 = query
        .iter()
        .zip(values)
        .map(|(q, v)| q * f32::from(v))
        .sum();
    Some(sum * scale)
}

/// A [`pack`]ed vector back as floats; `None` when it is not `dims` wide.
pub fn unpack(packed: &[u8], dims: usize) -> Option<Vec<f32>> {
    let (scale, values) = unpack_quantized(packed, dims)?;
    Some(values.map(|v| f32::from(v) * scale).collect())
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

    #[test]
    fn packed_vectors_keep_their_dot_products() {
        use super::{dot_packed, pack, unpack};
        let v = [0.6f32, -0.8, 0.0, 0.0];
        let packed = pack(&v);
        assert_eq!(packed.len(), 4 + 4);
        let dot = dot_packed(&v, &packed).unwrap();
        assert!((dot - 1.0).abs() < 0.01, "{dot}");
        let back = unpack(&packed, 4).unwrap();
        assert!(back.iter().zip(v).all(|(b, v)| (b - v).abs() < 0.004));
        assert_eq!(dot_packed(&[1.0; 5], &packed), None);
        let copy = super::StaticTable::from_quantized(3, [(0.5, &[1i8, 2, 3][..])]).unwrap();
        assert_eq!(copy.row(0).unwrap(), [0.5, 1.0, 1.5]);
    }
}
