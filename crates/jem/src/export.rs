//! ONNX export of a trained classifier (cargo feature `onnx`), written through the ONNX
//! schema's generated messages (`onnx-protobuf`, rust-protobuf), for other runtimes.
//!
//! The graph takes float32 images in `[0, 1]` as `images`, `[n, c, h, w]` with a free batch
//! size, scales them to the model's `[-1, 1]` itself, and outputs `logits` (`[n, k]`) and,
//! when asked, `logsumexp` (`[n]`, the negative energy, so the OOD score `logp` is computed in
//! the other runtime too). Operators are those of opset 13: Conv, LeakyRelu,
//! BatchNormalization, the reductions a group norm is made of, Add, GlobalAveragePool,
//! Flatten, MatMul.

use std::path::Path;

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, GroupNorm, Linear};
use burn::prelude::*;
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::tensor_shape_proto::{Dimension, dimension};
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, type_proto,
};

use crate::model::{Classifier, LEAKY_SLOPE, NormLayer, WideBlock};
use crate::tensor_file::write_atomic;
use crate::{Error, Result};

/// The opset the graph is written for.
pub const OPSET: i64 = 13;

/// A graph under construction: nodes, initialisers and a counter for fresh names.
#[derive(Default)]
struct Graph {
    nodes: Vec<NodeProto>,
    init: Vec<TensorProto>,
    names: usize,
}

fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::INT.into(),
        i,
        ..Default::default()
    }
}

fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::INTS.into(),
        ints: ints.to_vec(),
        ..Default::default()
    }
}

fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::FLOAT.into(),
        f,
        ..Default::default()
    }
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 values")
}

impl Graph {
    fn fresh(&mut self, hint: &str) -> String {
        self.names += 1;
        format!("{hint}_{}", self.names)
    }

    /// A float initialiser.
    fn floats(&mut self, hint: &str, dims: &[usize], data: Vec<f32>) -> String {
        let name = self.fresh(hint);
        self.init.push(TensorProto {
            name: name.clone(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::FLOAT as i32,
            float_data: data,
            ..Default::default()
        });
        name
    }

    /// An int64 initialiser (shapes and axes).
    fn ints(&mut self, hint: &str, data: &[i64]) -> String {
        let name = self.fresh(hint);
        self.init.push(TensorProto {
            name: name.clone(),
            dims: vec![data.len() as i64],
            data_type: DataType::INT64 as i32,
            int64_data: data.to_vec(),
            ..Default::default()
        });
        name
    }

    fn param<const D: usize>(&mut self, hint: &str, p: &Param<Tensor<D>>) -> String {
        let t = p.val();
        let dims = t.dims();
        self.floats(hint, &dims, values(t))
    }

    /// One node of `op` on `inputs`; returns its output's name.
    fn op(&mut self, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.nodes.push(NodeProto {
            op_type: op.into(),
            name: format!("{out}_node"),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            attribute,
            ..Default::default()
        });
        out
    }

    fn scalar(&mut self, v: f32) -> String {
        self.floats("c", &[], vec![v])
    }

    fn leaky(&mut self, x: &str) -> String {
        self.op(
            "LeakyRelu",
            &[x],
            vec![attr_float("alpha", LEAKY_SLOPE as f32)],
        )
    }

    fn conv(&mut self, c: &Conv2d, x: &str) -> Result<String> {
        let pad = match &c.padding {
            burn::nn::PaddingConfig2d::Valid => [0, 0, 0, 0],
            burn::nn::PaddingConfig2d::Explicit(t, l, b, r) => [*t, *l, *b, *r],
            other => {
                return Err(Error::Export(format!(
                    "conv padding {other:?} is not supported"
                )));
            }
        };
        let w = self.param("conv_w", &c.weight);
        let mut inputs = vec![x.to_string(), w];
        if let Some(b) = &c.bias {
            inputs.push(self.param("conv_b", b));
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let [pt, pl, pb, pr] = pad.map(|p| p as i64);
        Ok(self.op(
            "Conv",
            &refs,
            vec![
                attr_ints("kernel_shape", &c.kernel_size.map(|k| k as i64)),
                attr_ints("strides", &c.stride.map(|s| s as i64)),
                attr_ints("dilations", &c.dilation.map(|s| s as i64)),
                attr_int("group", c.groups as i64),
                // ONNX orders pads as [top, left, bottom, right].
                attr_ints("pads", &[pt, pl, pb, pr]),
            ],
        ))
    }

    fn linear(&mut self, l: &Linear, x: &str) -> String {
        let w = self.param("fc_w", &l.weight); // [in, out]
        let y = self.op("MatMul", &[x, &w], vec![]);
        match &l.bias {
            Some(b) => {
                let b = self.param("fc_b", b);
                self.op("Add", &[&y, &b], vec![])
            }
            None => y,
        }
    }

    fn batch_norm(&mut self, n: &BatchNorm, x: &str) -> String {
        let scale = self.param("bn_scale", &n.gamma);
        let bias = self.param("bn_bias", &n.beta);
        let mean = n.running_mean.value();
        let var = n.running_var.value();
        let c = mean.dims()[0];
        let mean = self.floats("bn_mean", &[c], values(mean));
        let var = self.floats("bn_var", &[c], values(var));
        self.op(
            "BatchNormalization",
            &[x, &scale, &bias, &mean, &var],
            vec![attr_float("epsilon", n.epsilon as f32)],
        )
    }

    /// Group norm as its reductions: statistics over each group of channels and pixels.
    fn group_norm(&mut self, n: &GroupNorm, x: &str) -> String {
        let shape = self.op("Shape", &[x], vec![]);
        let grouped = self.ints("groups", &[0, n.num_groups as i64, -1]);
        let g = self.op("Reshape", &[x, &grouped], vec![]); // [b, g, c/g * h * w]
        let mean = self.op("ReduceMean", &[&g], vec![attr_ints("axes", &[2])]);
        let d = self.op("Sub", &[&g, &mean], vec![]);
        let sq = self.op("Mul", &[&d, &d], vec![]);
        let var = self.op("ReduceMean", &[&sq], vec![attr_ints("axes", &[2])]);
        let eps = self.scalar(n.epsilon as f32);
        let std = self.op("Add", &[&var, &eps], vec![]);
        let std = self.op("Sqrt", &[&std], vec![]);
        let y = self.op("Div", &[&d, &std], vec![]);
        let y = self.op("Reshape", &[&y, &shape], vec![]); // [b, c, h, w]
        match (&n.gamma, &n.beta) {
            (Some(gamma), Some(beta)) => {
                let c = n.num_channels;
                let gamma = self.floats("gn_scale", &[c, 1, 1], values(gamma.val()));
                let beta = self.floats("gn_bias", &[c, 1, 1], values(beta.val()));
                let y = self.op("Mul", &[&y, &gamma], vec![]);
                self.op("Add", &[&y, &beta], vec![])
            }
            _ => y,
        }
    }

    fn norm(&mut self, n: &Option<NormLayer>, x: &str) -> String {
        match n {
            None => x.to_string(),
            Some(NormLayer::Batch(b)) => self.batch_norm(b, x),
            Some(NormLayer::Group(g)) => self.group_norm(g, x),
        }
    }

    fn wide_block(&mut self, b: &WideBlock, x: &str) -> Result<String> {
        let o = self.norm(&b.norm1, x);
        let o = self.leaky(&o);
        let y = self.conv(&b.conv1, &o)?;
        let y = self.norm(&b.norm2, &y);
        let y = self.leaky(&y);
        let y = self.conv(&b.conv2, &y)?; // dropout is the identity at inference
        let skip = match &b.shortcut {
            Some(s) => self.conv(s, &o)?,
            None => x.to_string(),
        };
        Ok(self.op("Add", &[&y, &skip], vec![]))
    }

    /// The classifier from its input to its logits.
    fn classifier(&mut self, model: &Classifier, x: &str) -> Result<String> {
        let (features, head) = match model {
            Classifier::Cnn(m) => {
                let (convs, head) = m.parts();
                let mut x = x.to_string();
                for c in convs {
                    let y = self.conv(c, &x)?;
                    x = self.leaky(&y);
                }
                (x, head)
            }
            Classifier::Wrn(m) => {
                let mut x = self.conv(&m.stem, x)?;
                for b in &m.blocks {
                    x = self.wide_block(b, &x)?;
                }
                let x = self.norm(&m.norm, &x);
                (self.leaky(&x), &m.head)
            }
        };
        let pooled = self.op("GlobalAveragePool", &[&features], vec![]);
        let flat = self.op("Flatten", &[&pooled], vec![attr_int("axis", 1)]);
        Ok(self.linear(head, &flat))
    }

    /// `logsumexp` over axis 1 of `logits`, stably, as `[n]`.
    fn logsumexp(&mut self, logits: &str) -> String {
        let m = self.op("ReduceMax", &[logits], vec![attr_ints("axes", &[1])]);
        let d = self.op("Sub", &[logits, &m], vec![]);
        let e = self.op("Exp", &[&d], vec![]);
        let axes = self.ints("axes", &[1]);
        let s = self.op("ReduceSum", &[&e, &axes], vec![]);
        let l = self.op("Log", &[&s], vec![]);
        let l = self.op("Add", &[&l, &m], vec![]);
        let flat = self.ints("shape", &[-1]);
        self.op("Reshape", &[&l, &flat], vec![])
    }
}

fn value_info(name: &str, dims: &[Option<usize>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => dimension::Value::DimValue(*v as i64),
                None => dimension::Value::DimParam("n".into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        type_: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::FLOAT as i32,
                shape: Some(TensorShapeProto {
                    dim,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// The ONNX model of `model` for images of `shape` (`[c, h, w]`) and `k` classes, with the
/// `logsumexp` output when `with_energy`.
pub fn onnx_model(
    model: &Classifier,
    shape: [usize; 3],
    k: usize,
    with_energy: bool,
) -> Result<ModelProto> {
    let mut g = Graph::default();
    let two = g.scalar(2.0);
    let one = g.scalar(1.0);
    let x = g.op("Mul", &["images", &two], vec![]);
    let x = g.op("Sub", &[&x, &one], vec![]); // [n, c, h, w] in [-1, 1]
    let logits = g.classifier(model, &x)?;
    let mut rename = vec![(logits.clone(), "logits")];
    let mut outputs = vec![value_info("logits", &[None, Some(k)])];
    if with_energy {
        rename.push((g.logsumexp(&logits), "logsumexp"));
        outputs.push(value_info("logsumexp", &[None]));
    }
    for node in &mut g.nodes {
        for o in node.output.iter_mut().chain(node.input.iter_mut()) {
            if let Some((_, to)) = rename.iter().find(|(from, _)| from == o) {
                *o = to.to_string();
            }
        }
    }
    let [c, h, w] = shape;
    let graph = GraphProto {
        name: "jem".into(),
        node: g.nodes,
        initializer: g.init,
        input: vec![value_info("images", &[None, Some(c), Some(h), Some(w)])],
        output: outputs,
        ..Default::default()
    };
    Ok(ModelProto {
        ir_version: 7,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
            ..Default::default()
        }],
        producer_name: "jem".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph).into(),
        ..Default::default()
    })
}

/// Write `model` as an ONNX file at `path`, atomically.
pub fn write_onnx(
    model: &Classifier,
    shape: [usize; 3],
    k: usize,
    with_energy: bool,
    path: &Path,
) -> Result<()> {
    let proto = onnx_model(model, shape, k, with_energy)?;
    let bytes = proto
        .write_to_bytes()
        .map_err(|e| Error::Export(format!("encoding the ONNX model: {e}")))?;
    write_atomic(path, &bytes)?;
    Ok(())
}
