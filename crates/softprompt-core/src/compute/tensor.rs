//! A plain dense f32 tensor: row-major data with its shape. The model keeps its
//! weights this way (HF layout: a linear weight is `[out_features, in_features]`).

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "tensor shape {shape:?} vs {} values",
            data.len()
        );
        Tensor { shape, data }
    }
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![0.0; n],
        }
    }
    pub fn numel(&self) -> usize {
        self.data.len()
    }
    /// Row `i` of a 2-D tensor.
    pub fn row(&self, i: usize) -> &[f32] {
        let d = self.shape[self.shape.len() - 1];
        &self.data[i * d..(i + 1) * d]
    }
}
