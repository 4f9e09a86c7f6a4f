//! Shape and stride descriptions of tensors laid over a buffer.

use crate::error::{BoundsError, Error, LayoutError, Result};

/// A strided tensor: shape and strides in elements, and the element size in bytes.
///
/// Every length is validated at construction with checked arithmetic; a descriptor that exists
/// has a known, non-zero byte span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorDescriptor {
    shape: Vec<usize>,
    strides: Vec<usize>,
    elem_size: usize,
    numel: usize,
    span_bytes: usize,
}

impl TensorDescriptor {
    /// A tensor with explicit strides (in elements).
    ///
    /// # Errors
    /// [`LayoutError::InvalidTensor`] when ranks differ, the element size or a dimension is zero, or a
    /// stride is zero on a dimension longer than one; [`BoundsError::Overflow`] when the element count or
    /// byte span overflows.
    pub fn new(shape: &[usize], strides: &[usize], elem_size: usize) -> Result<Self> {
        if shape.len() != strides.len() {
            return Err(Error::Layout(LayoutError::InvalidTensor(format!(
                "shape has {} dimensions but strides have {}",
                shape.len(),
                strides.len()
            ))));
        }
        if elem_size == 0 {
            return Err(Error::Layout(LayoutError::InvalidTensor(
                "element size must be positive".into(),
            )));
        }
        let overflow = Error::Bounds(BoundsError::Overflow {
            what: "tensor size",
        });
        let mut numel: usize = 1;
        let mut last: usize = 0;
        for (i, (&dim, &stride)) in shape.iter().zip(strides).enumerate() {
            if dim == 0 {
                return Err(Error::Layout(LayoutError::InvalidTensor(format!(
                    "dimension {i} has length 0"
                ))));
            }
            if stride == 0 && dim > 1 {
                return Err(Error::Layout(LayoutError::InvalidTensor(format!(
                    "dimension {i} has stride 0 and length {dim}: elements would alias"
                ))));
            }
            numel = numel
                .checked_mul(dim)
                .ok_or(Error::Bounds(BoundsError::Overflow {
                    what: "tensor element count",
                }))?;
            last = (dim - 1)
                .checked_mul(stride)
                .and_then(|x| last.checked_add(x))
                .ok_or(Error::Bounds(BoundsError::Overflow {
                    what: "tensor size",
                }))?;
        }
        let span_bytes = last
            .checked_add(1)
            .and_then(|n| n.checked_mul(elem_size))
            .ok_or(overflow)?;
        numel
            .checked_mul(elem_size)
            .ok_or(Error::Bounds(BoundsError::Overflow {
                what: "tensor size",
            }))?;
        Ok(Self {
            shape: shape.to_vec(),
            strides: strides.to_vec(),
            elem_size,
            numel,
            span_bytes,
        })
    }

    /// A contiguous (row-major) tensor of `shape`.
    ///
    /// # Errors
    /// As for [`new`](Self::new).
    pub fn contiguous(shape: &[usize], elem_size: usize) -> Result<Self> {
        let mut strides = vec![0usize; shape.len()];
        let mut acc: usize = 1;
        for (s, &dim) in strides.iter_mut().zip(shape).rev() {
            *s = acc;
            acc = acc
                .checked_mul(dim)
                .ok_or(Error::Bounds(BoundsError::Overflow {
                    what: "tensor stride",
                }))?;
        }
        Self::new(shape, &strides, elem_size)
    }

    /// Dimensions, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Strides in elements.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// Element size in bytes.
    pub fn elem_size(&self) -> usize {
        self.elem_size
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.numel
    }

    /// Bytes the elements occupy (`numel * elem_size`).
    pub fn nbytes(&self) -> usize {
        self.numel * self.elem_size
    }

    /// Bytes from the first element to one past the last: the memory the tensor touches.
    pub fn span_bytes(&self) -> usize {
        self.span_bytes
    }

    /// True when the strides are row-major over the shape (dimensions of length 1 may have any
    /// stride), so the tensor is one dense run of `nbytes()` bytes.
    pub fn is_contiguous(&self) -> bool {
        let mut expected: usize = 1;
        for (&dim, &stride) in self.shape.iter().zip(&self.strides).rev() {
            if dim != 1 && stride != expected {
                return false;
            }
            expected *= dim; // bounded by numel, which was checked
        }
        true
    }

    /// Checks that the tensor, placed `offset` bytes into a region of `region_size` bytes, lies
    /// inside it.
    ///
    /// # Errors
    /// [`BoundsError::OutOfBounds`] when it does not.
    pub fn check_fits(&self, offset: usize, region_size: usize) -> Result<()> {
        crate::host::checked_range(offset, self.span_bytes, region_size).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_and_strided() {
        let t = TensorDescriptor::contiguous(&[2, 3, 4], 2).unwrap();
        assert_eq!(t.strides(), &[12, 4, 1]);
        assert_eq!(t.nbytes(), 48);
        assert_eq!(t.span_bytes(), 48);
        assert!(t.is_contiguous());
        let s = TensorDescriptor::new(&[2, 3], &[8, 1], 4).unwrap();
        assert!(!s.is_contiguous());
        assert_eq!(s.span_bytes(), (8 + 2 + 1) * 4);
        assert!(s.check_fits(0, 44).is_ok());
        assert!(s.check_fits(1, 44).is_err());
    }

    #[test]
    fn invalid_descriptors() {
        assert!(TensorDescriptor::new(&[2], &[1, 1], 4).is_err());
        assert!(TensorDescriptor::new(&[0], &[1], 4).is_err());
        assert!(TensorDescriptor::new(&[2], &[0], 4).is_err());
        assert!(TensorDescriptor::new(&[2], &[1], 0).is_err());
        assert!(matches!(
            TensorDescriptor::contiguous(&[usize::MAX, 2], 1),
            Err(Error::Bounds(BoundsError::Overflow { .. }))
        ));
    }
}
