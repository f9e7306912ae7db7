//! [`Stream`]: the device, its buffers, and the commands of the current step.
//!
//! Every op records one compute pass into the one open command encoder; nothing is
//! submitted until the host needs something back ([`Stream::read`]) or writes over data
//! that recorded commands will read ([`Stream::write`], [`Stream::write_index`]), so a
//! forward pass is one submission. Pipelines, bind group layouts and bind groups are made on
//! first use and kept: a step of a given shape binds the same buffers every time.
//!
//! Small per-step data lives in three arenas, uploaded with one copy each when the step is
//! submitted:
//! - parameters: one uniform block per dispatch, at a dynamic offset of one buffer;
//! - indices (token ids, positions, block tables): every index vector of the backend, with a
//!   host mirror the ops validate against;
//! - tables (rope cosines and sines): appended during a step, reset once the step is read.
//!
//! wgpu reports most errors asynchronously; they are collected and returned by the next
//! [`Stream::read`] as [`ComputeError::Device`] (never the default handler's panic).

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex};

use worker_compute::{ComputeError, Result};

use crate::device::Gpu;
use crate::shaders::{Kernel, WORKGROUP};

/// A buffer of the [`Stream`], by position in its registry.
pub(crate) type BufId = u32;

/// Bytes of one dispatch's parameter block (the largest kernel's uniform struct fits).
const PARAM_BYTES: u64 = 64;
/// Parameter blocks per submission before the stream submits early.
const PARAM_SLOTS: u64 = 2048;
/// Zero bytes after every weight part: block readers may load one word past a row.
pub(crate) const WEIGHT_PAD: u64 = 16;

/// An error wgpu could not report where it happened, as the trait's error.
#[derive(Debug)]
struct DeviceMessage(String);

impl std::fmt::Display for DeviceMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DeviceMessage {}

fn device_error(op: &'static str, message: String) -> ComputeError {
    ComputeError::Device {
        op,
        source: Box::new(DeviceMessage(message)),
    }
}

/// A host-mirrored device arena of 4-byte values (`u32` indices or `f32` tables).
struct Mirror<T> {
    host: Vec<T>,
    /// Entries handed out.
    used: usize,
    buf: BufId,
    /// The host range written since the last upload.
    dirty: Option<(usize, usize)>,
}

impl<T: Word> Mirror<T> {
    fn mark(&mut self, lo: usize, hi: usize) {
        self.dirty = Some(match self.dirty {
            Some((a, b)) => (a.min(lo), b.max(hi)),
            None => (lo, hi),
        });
    }

    /// Queues the copy of what changed since the last upload.
    fn upload(&mut self, queue: &wgpu::Queue, buffers: &[wgpu::Buffer]) {
        if let (Some((lo, hi)), Some(b)) = (self.dirty.take(), buffers.get(self.buf as usize)) {
            queue.write_buffer(b, lo as u64 * 4, &to_bytes(&self.host[lo..hi]));
        }
    }
}

/// A 4-byte value uploaded as its little-endian bytes.
trait Word: Copy {
    fn bytes(self) -> [u8; 4];
}

impl Word for u32 {
    fn bytes(self) -> [u8; 4] {
        self.to_le_bytes()
    }
}

impl Word for f32 {
    fn bytes(self) -> [u8; 4] {
        self.to_le_bytes()
    }
}

fn to_bytes<T: Word>(v: &[T]) -> Vec<u8> {
    v.iter().flat_map(|x| x.bytes()).collect()
}

/// What a kernel binds: its layout and the buffers of bindings 1…
type BindKey = (&'static [bool], Vec<BufId>);

/// The device and the commands of the current step (see the module doc).
pub(crate) struct Stream {
    pub gpu: Gpu,
    buffers: Vec<wgpu::Buffer>,
    allocated: u64,
    pipelines: HashMap<Kernel, wgpu::ComputePipeline>,
    layouts: HashMap<&'static [bool], (wgpu::BindGroupLayout, wgpu::PipelineLayout)>,
    bind_groups: HashMap<BindKey, wgpu::BindGroup>,
    encoder: Option<wgpu::CommandEncoder>,
    params: Vec<u8>,
    params_buf: wgpu::Buffer,
    params_used: u64,
    param_slot: u64,
    index: Mirror<u32>,
    table: Mirror<f32>,
    /// Incremented whenever the table arena is reset (offsets into it are stale).
    table_generation: u64,
    staging: Option<(wgpu::Buffer, u64)>,
    errors: Arc<Mutex<Vec<String>>>,
    /// Dispatches recorded since start-up.
    pub dispatches: u64,
    /// Submissions since start-up.
    pub submissions: u64,
}

impl Stream {
    pub fn new(gpu: Gpu) -> Result<Stream> {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        gpu.device
            .on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                if let Ok(mut v) = sink.lock() {
                    v.push(e.to_string());
                }
            }));
        let lost = errors.clone();
        gpu.device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut v) = lost.lock() {
                v.push(format!("device lost ({reason:?}): {message}"));
            }
        });
        let align = u64::from(gpu.limits.min_uniform_buffer_offset_alignment).max(4);
        let param_slot = PARAM_BYTES.next_multiple_of(align);
        let params_buf = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("parameters"),
            size: param_slot * PARAM_SLOTS,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut s = Stream {
            gpu,
            buffers: Vec::new(),
            allocated: 0,
            pipelines: HashMap::new(),
            layouts: HashMap::new(),
            bind_groups: HashMap::new(),
            encoder: None,
            params: vec![0; (param_slot * PARAM_SLOTS) as usize],
            params_buf,
            params_used: 0,
            param_slot,
            index: Mirror {
                host: Vec::new(),
                used: 0,
                buf: 0,
                dirty: None,
            },
            table: Mirror {
                host: Vec::new(),
                used: 0,
                buf: 0,
                dirty: None,
            },
            table_generation: 0,
            staging: None,
            errors,
            dispatches: 0,
            submissions: 0,
        };
        s.index.host = vec![0; 1 << 16];
        s.index.buf = s.alloc("index arena", 4 << 16)?;
        s.table.host = vec![0.0; 1 << 16];
        s.table.buf = s.alloc("rope table arena", 4 << 16)?;
        Ok(s)
    }

    /// Bytes of every buffer made so far.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// The largest buffer one storage binding may cover.
    pub fn max_binding(&self) -> u64 {
        self.gpu
            .limits
            .max_storage_buffer_binding_size
            .min(self.gpu.limits.max_buffer_size)
    }

    /// Runs `f`, turning an out-of-memory or validation error it raises into `Alloc`.
    fn scoped<T>(&self, what: &'static str, bytes: u64, f: impl FnOnce() -> T) -> Result<T> {
        let oom = self
            .gpu
            .device
            .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let valid = self
            .gpu
            .device
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let v = pollster::block_on(valid.pop());
        let o = pollster::block_on(oom.pop());
        if let Some(e) = o.or(v) {
            tracing::warn!(what, bytes, error = %e, "device allocation failed");
            return Err(ComputeError::Alloc {
                what,
                bytes: u128::from(bytes),
            });
        }
        Ok(out)
    }

    fn check_size(&self, what: &'static str, bytes: u64) -> Result<u64> {
        let size = bytes.max(16).next_multiple_of(16);
        if size > self.max_binding() {
            tracing::warn!(
                what,
                bytes,
                max_binding = self.max_binding(),
                "larger than one storage binding of this adapter"
            );
            return Err(ComputeError::Alloc {
                what,
                bytes: u128::from(bytes),
            });
        }
        Ok(size)
    }

    /// A zeroed storage buffer of at least `bytes` (a multiple of 16, at least 16).
    pub fn alloc(&mut self, what: &'static str, bytes: u64) -> Result<BufId> {
        let size = self.check_size(what, bytes)?;
        let buf = self.scoped(what, size, || {
            self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(what),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            })
        })?;
        Ok(self.register(buf, size))
    }

    /// A storage buffer holding `data`, then zeros up to a multiple of 16 and at least
    /// [`WEIGHT_PAD`] bytes more.
    pub fn alloc_init(&mut self, what: &'static str, data: &[u8]) -> Result<BufId> {
        let size = self.check_size(what, data.len() as u64 + WEIGHT_PAD)?;
        let buf = self.scoped(what, size, || {
            self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(what),
                size,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: true,
            })
        })?;
        {
            let mut view = buf
                .slice(..)
                .get_mapped_range_mut()
                .map_err(|e| device_error("upload", e.to_string()))?;
            view.slice(..data.len()).copy_from_slice(data);
        }
        buf.unmap();
        Ok(self.register(buf, size))
    }

    fn register(&mut self, buf: wgpu::Buffer, size: u64) -> BufId {
        self.allocated += size;
        self.buffers.push(buf);
        self.buffers.len() as BufId - 1
    }

    /// Copies `data` to the start of `buf`, after submitting the commands recorded so far
    /// (they may read what is overwritten).
    pub fn write(&mut self, buf: BufId, data: &[u8]) -> Result<()> {
        self.submit("write_rows")?;
        if let Some(b) = self.buffers.get(buf as usize) {
            self.gpu.queue.write_buffer(b, 0, data);
        }
        Ok(())
    }

    /// Room for `len` more indices; returns the offset of the first.
    pub fn alloc_index(&mut self, len: usize) -> Result<usize> {
        let off = self.index.used;
        let need = off.checked_add(len).ok_or(ComputeError::Alloc {
            what: "index",
            bytes: len as u128 * 4,
        })?;
        if need > self.index.host.len() {
            self.grow_index(need)?;
        }
        self.index.used = need;
        Ok(off)
    }

    fn grow_index(&mut self, need: usize) -> Result<()> {
        self.submit("alloc_index")?;
        let cap = need.next_power_of_two();
        let bytes = cap as u64 * 4;
        let size = self.check_size("index arena", bytes)?;
        let buf = self.scoped("index arena", size, || {
            self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("index arena"),
                size,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        self.index.host.resize(cap, 0);
        self.replace(self.index.buf, buf, size);
        self.index.mark(0, self.index.used);
        Ok(())
    }

    /// Puts `buf` in the registry slot `id` (an arena that grew): bind groups that named the
    /// old buffer are dropped.
    fn replace(&mut self, id: BufId, buf: wgpu::Buffer, size: u64) {
        if let Some(old) = self.buffers.get_mut(id as usize) {
            self.allocated = self.allocated.saturating_sub(old.size()) + size;
            *old = buf;
        }
        self.bind_groups.clear();
    }

    /// The index vector at `off`, as the host last wrote it.
    pub fn index(&self, off: usize, len: usize) -> &[u32] {
        &self.index.host[off..off + len]
    }

    /// Writes indices at `off`, after submitting the commands recorded so far.
    pub fn write_index(&mut self, off: usize, data: &[u32]) -> Result<()> {
        self.submit("write_index")?;
        self.index.host[off..off + data.len()].copy_from_slice(data);
        self.index.mark(off, off + data.len());
        Ok(())
    }

    /// The index arena (every kernel that reads indices binds it).
    pub fn index_buf(&self) -> BufId {
        self.index.buf
    }

    /// The table arena.
    pub fn table_buf(&self) -> BufId {
        self.table.buf
    }

    /// Changes whenever table offsets go stale.
    pub fn table_generation(&self) -> u64 {
        self.table_generation
    }

    /// Appends `data` to the table arena for this step; returns its offset.
    pub fn push_table(&mut self, data: &[f32]) -> Result<usize> {
        let off = self.table.used;
        let need = off + data.len();
        if need > self.table.host.len() {
            // The commands recorded so far read the old buffer: submit them with it.
            self.submit("rope")?;
            let cap = need.next_power_of_two();
            let size = self.check_size("rope table arena", cap as u64 * 4)?;
            let buf = self.scoped("rope table arena", size, || {
                self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("rope table arena"),
                    size,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })?;
            self.table.host.resize(cap, 0.0);
            self.replace(self.table.buf, buf, size);
            self.table.mark(0, off);
        }
        self.table.host[off..need].copy_from_slice(data);
        self.table.mark(off, need);
        self.table.used = need;
        Ok(off)
    }

    fn layout(&mut self, ro: &'static [bool]) -> &(wgpu::BindGroupLayout, wgpu::PipelineLayout) {
        let device = &self.gpu.device;
        self.layouts.entry(ro).or_insert_with(|| {
            let mut entries = vec![wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: NonZeroU64::new(PARAM_BYTES),
                },
                count: None,
            }];
            for (i, &read_only) in ro.iter().enumerate() {
                entries.push(wgpu::BindGroupLayoutEntry {
                    binding: i as u32 + 1,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                });
            }
            let bgl = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: None,
                entries: &entries,
            });
            let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: None,
                bind_group_layouts: &[Some(&bgl)],
                immediate_size: 0,
            });
            (bgl, pl)
        })
    }

    /// The pipeline of `kernel`, compiled on first use.
    pub fn pipeline(&mut self, kernel: Kernel) -> Result<wgpu::ComputePipeline> {
        if let Some(p) = self.pipelines.get(&kernel) {
            return Ok(p.clone());
        }
        let label = kernel.label();
        let src = kernel
            .source(self.gpu.subgroups)
            .ok_or_else(|| ComputeError::Unsupported {
                op: "pipeline",
                reason: format!("no kernel {label}"),
            })?;
        let layout = self.layout(kernel.read_only()).1.clone();
        let device = &self.gpu.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(&label),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: Some(&layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(device_error("pipeline", format!("{label}: {e}")));
        }
        self.pipelines.insert(kernel, pipeline.clone());
        Ok(pipeline)
    }

    fn bind_group(&mut self, kernel: Kernel, bufs: &[BufId]) -> Result<wgpu::BindGroup> {
        let ro = kernel.read_only();
        let key = (ro, bufs.to_vec());
        if let Some(bg) = self.bind_groups.get(&key) {
            return Ok(bg.clone());
        }
        if bufs.len() != ro.len() {
            return Err(device_error(
                "bind",
                format!(
                    "{}: {} buffers for {}",
                    kernel.label(),
                    bufs.len(),
                    ro.len()
                ),
            ));
        }
        let bgl = self.layout(ro).0.clone();
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.params_buf,
                offset: 0,
                size: NonZeroU64::new(PARAM_BYTES),
            }),
        }];
        for (i, &b) in bufs.iter().enumerate() {
            let buffer = self
                .buffers
                .get(b as usize)
                .ok_or_else(|| device_error("bind", format!("no buffer {b}")))?;
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: buffer.as_entire_binding(),
            });
        }
        let bg = self
            .gpu
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &bgl,
                entries: &entries,
            });
        self.bind_groups.insert(key, bg.clone());
        Ok(bg)
    }

    /// Records `kernel` over `groups` workgroups with `params` (the kernel's uniform struct,
    /// field by field) and `bufs` bound to bindings 1…
    pub fn dispatch(
        &mut self,
        kernel: Kernel,
        params: &[u32],
        bufs: &[BufId],
        groups: u64,
    ) -> Result<()> {
        if groups == 0 {
            return Ok(());
        }
        let max = u64::from(self.gpu.limits.max_compute_workgroups_per_dimension);
        let gx = groups.min(max);
        let gy = groups.div_ceil(gx);
        if gy > max || params.len() * 4 > PARAM_BYTES as usize {
            return Err(ComputeError::Shape {
                op: "dispatch",
                reason: format!("{}: {groups} workgroups", kernel.label()),
            });
        }
        let pipeline = self.pipeline(kernel)?;
        let bg = self.bind_group(kernel, bufs)?;
        if self.params_used + self.param_slot > self.params_buf.size() {
            self.submit("dispatch")?;
        }
        let off = self.params_used;
        self.params[off as usize..][..params.len() * 4].copy_from_slice(&to_bytes(params));
        self.params_used += self.param_slot;
        let device = &self.gpu.device;
        let encoder = self
            .encoder
            .get_or_insert_with(|| device.create_command_encoder(&Default::default()));
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: None,
            timestamp_writes: None,
        });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bg, &[off as u32]);
        pass.dispatch_workgroups(gx as u32, gy as u32, 1);
        drop(pass);
        self.dispatches += 1;
        Ok(())
    }

    /// Records a copy of the first `bytes` of `src` into `dst` (a multiple of 4).
    pub fn copy(&mut self, src: BufId, dst: BufId, bytes: u64) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let (Some(s), Some(d)) = (
            self.buffers.get(src as usize),
            self.buffers.get(dst as usize),
        ) else {
            return Err(device_error("copy", format!("no buffer {src} or {dst}")));
        };
        let device = &self.gpu.device;
        let encoder = self
            .encoder
            .get_or_insert_with(|| device.create_command_encoder(&Default::default()));
        encoder.copy_buffer_to_buffer(s, 0, d, 0, bytes);
        Ok(())
    }

    /// Uploads what the arenas gained and submits the recorded commands, if any.
    fn submit(&mut self, op: &'static str) -> Result<()> {
        let queue = &self.gpu.queue;
        if self.params_used > 0 {
            queue.write_buffer(
                &self.params_buf,
                0,
                &self.params[..self.params_used as usize],
            );
            self.params_used = 0;
        }
        self.index.upload(queue, &self.buffers);
        self.table.upload(queue, &self.buffers);
        if let Some(encoder) = self.encoder.take() {
            queue.submit([encoder.finish()]);
            self.submissions += 1;
        }
        self.check(op)
    }

    /// The errors wgpu reported since the last check, as one error.
    fn check(&self, op: &'static str) -> Result<()> {
        let mut errors = self
            .errors
            .lock()
            .map_err(|_| device_error(op, "the device error log was poisoned by a panic".into()))?;
        if errors.is_empty() {
            return Ok(());
        }
        let all = std::mem::take(&mut *errors).join("; ");
        Err(device_error(op, all))
    }

    /// Copies the first `out.len()` floats of `src` to the host: submits everything
    /// recorded, waits for it, and resets the table arena.
    pub fn read(&mut self, src: BufId, out: &mut [f32]) -> Result<()> {
        const OP: &str = "read_rows";
        let bytes = out.len() as u64 * 4;
        if bytes > 0 {
            let have = self.staging.as_ref().map_or(0, |(_, n)| *n);
            if have < bytes {
                let size = bytes.next_power_of_two().max(4096);
                let buf = self.scoped("read-back buffer", size, || {
                    self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("read-back"),
                        size,
                        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    })
                })?;
                self.staging = Some((buf, size));
            }
            let (Some((staging, _)), Some(s)) = (&self.staging, self.buffers.get(src as usize))
            else {
                return Err(device_error(OP, format!("no buffer {src}")));
            };
            let device = &self.gpu.device;
            let encoder = self
                .encoder
                .get_or_insert_with(|| device.create_command_encoder(&Default::default()));
            encoder.copy_buffer_to_buffer(s, 0, staging, 0, bytes);
        }
        self.submit(OP)?;
        let mapped = if bytes > 0 {
            let Some((staging, _)) = &self.staging else {
                return Err(device_error(OP, "no read-back buffer".into()));
            };
            let (tx, rx) = std::sync::mpsc::channel();
            staging.map_async(wgpu::MapMode::Read, ..bytes, move |r| {
                let _ = tx.send(r);
            });
            Some((staging, rx))
        } else {
            None
        };
        self.gpu
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| device_error(OP, e.to_string()))?;
        self.table.used = 0;
        self.table_generation += 1;
        self.check(OP)?;
        if let Some((staging, rx)) = mapped {
            match rx.try_recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(device_error(OP, e.to_string())),
                Err(_) => return Err(device_error(OP, "the read-back was not mapped".into())),
            }
            {
                let view = staging
                    .get_mapped_range(..bytes)
                    .map_err(|e| device_error(OP, e.to_string()))?;
                for (o, b) in out.iter_mut().zip(view.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            staging.unmap();
        }
        Ok(())
    }
}

/// Workgroups to cover `n` invocations.
pub(crate) fn groups_for(n: usize) -> u64 {
    (n as u64).div_ceil(u64::from(WORKGROUP))
}
