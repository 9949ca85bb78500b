//! Reads PyTorch checkpoints without Python: `torch.save`'s zip format (the default since torch
//! 1.6) and its legacy pickle-stream format, holding a state dict (a `dict` or an `OrderedDict`
//! of tensors) or a training checkpoint that wraps one; safetensors through libtorch.
//!
//! libtorch's own loader only knows plain dicts, so the pickles are read here by a small stack
//! machine that understands the opcodes `torch.save` emits. It executes nothing: globals are
//! only names, a few torch and `collections` callables (those that rebuild tensors and dicts)
//! are given their meaning, and every other object stays opaque.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use tch::{Device, Kind, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum PthError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("zip archive: {0}")]
    Zip(#[from] zip::result::ZipError),
    #[error("not a PyTorch checkpoint (torch.save's zip or legacy format, or safetensors): {0}")]
    NotACheckpoint(String),
    #[error("{part}: at byte {at}: {message}")]
    Pickle {
        part: &'static str,
        at: usize,
        message: String,
    },
    #[error("{0}")]
    Layout(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// What a file holds, told by its first bytes (safetensors also by its extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Zip,
    Legacy,
    Safetensors,
}

const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
/// torch's legacy MAGIC_NUMBER 0x1950a86a20f9469cfc6c, as pickle's LONG1 writes it.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const LEGACY_PROTOCOL_VERSION: i64 = 1001;
/// Bounds on resolving memo references, so a hostile pickle (a list holding itself, or
/// exponentially shared references) gives an error instead of a stack overflow or a hang.
const MAX_DEPTH: usize = 128;
const MAX_RESOLVED: usize = 50_000_000;

pub fn detect(path: &Path) -> Result<Format, PthError> {
    let mut head = Vec::with_capacity(512);
    File::open(path)?.take(512).read_to_end(&mut head)?;
    let len = std::fs::metadata(path)?.len();
    if head.starts_with(ZIP_MAGIC) {
        return Ok(Format::Zip);
    }
    // PROTO: a pickle; read_legacy checks that it starts with torch's magic number.
    if head.first() == Some(&0x80) {
        return Ok(Format::Legacy);
    }
    if looks_like_safetensors(&head, len) || path.extension().is_some_and(|e| e == "safetensors") {
        return Ok(Format::Safetensors);
    }
    if head.get(257..262) == Some(b"ustar") {
        return Err(PthError::NotACheckpoint(
            "a tar archive (torch.save's pre-0.1.10 format, not supported: load it with an old \
             torch and save it again)"
                .into(),
        ));
    }
    Err(PthError::NotACheckpoint(describe_head(&head)))
}

/// An 8-byte little-endian header length that fits the file, then a JSON object.
fn looks_like_safetensors(head: &[u8], len: u64) -> bool {
    match (head.get(..8), head.get(8)) {
        (Some(n), Some(b'{')) => {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(n);
            u64::from_le_bytes(bytes) <= len.saturating_sub(8)
        }
        _ => false,
    }
}

fn describe_head(head: &[u8]) -> String {
    if head.is_empty() {
        return "the file is empty".into();
    }
    let shown = &head[..head.len().min(32)];
    if shown
        .iter()
        .all(|b| b.is_ascii_graphic() || b" \t\r\n".contains(b))
    {
        format!("found text starting {:?}", String::from_utf8_lossy(shown))
    } else {
        let hex: Vec<String> = shown.iter().take(16).map(|b| format!("{b:02x}")).collect();
        format!("found bytes {}", hex.join(" "))
    }
}

/// Every tensor of the state dict in `path`, by name, in file order, as contiguous CPU tensors.
pub fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>, PthError> {
    let (tensors, skipped) = match detect(path)? {
        Format::Safetensors => return Ok(Tensor::read_safetensors(path)?),
        Format::Zip => read_zip(path)?,
        Format::Legacy => read_legacy(path)?,
    };
    if !skipped.is_empty() {
        tracing::warn!(
            "{}: skipped {} entries that are not tensors: {}",
            path.display(),
            skipped.len(),
            shorten(&skipped)
        );
    }
    Ok(tensors)
}

/// The tensors, and the non-tensor entries of their dict that were skipped.
type Loaded = (Vec<(String, Tensor)>, Vec<String>);

/// torch.save's zip: `<name>/data.pkl`, whose persistent ids name `<name>/data/<key>` entries
/// holding each storage's raw bytes.
fn read_zip(path: &Path) -> Result<Loaded, PthError> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut archive = zip::ZipArchive::new(file)?;
    // The top folder is the file's stem (older torch) or `archive`.
    let pickles: Vec<String> = archive
        .file_names()
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .map(str::to_owned)
        .collect();
    let data_pkl = match pickles.as_slice() {
        [one] => one.clone(),
        [] => {
            let names: Vec<String> = archive.file_names().map(str::to_owned).collect();
            return Err(PthError::NotACheckpoint(format!(
                "a zip archive without <name>/data.pkl (it holds {})",
                shorten(&names)
            )));
        }
        many => {
            return Err(PthError::Layout(format!(
                "a zip archive with several pickles ({})",
                many.join(", ")
            )))
        }
    };
    let prefix = data_pkl.trim_end_matches("data.pkl").to_owned();
    let big_endian = match read_entry(&mut archive, &format!("{prefix}byteorder"), file_len) {
        Ok(order) => order.trim_ascii() == b"big",
        // Written since torch 1.10; older files are little-endian.
        Err(PthError::Zip(zip::result::ZipError::FileNotFound)) => false,
        Err(e) => return Err(e),
    };
    let pickle = read_entry(&mut archive, &data_pkl, file_len)?;
    let (root, _) = Machine::new("data.pkl").run(&pickle, 0)?;
    let (entries, skipped) = select_state_dict(root)?;
    let tensors = materialise(entries, big_endian, |key| {
        read_entry(&mut archive, &format!("{prefix}data/{key}"), file_len)
    })?;
    Ok((tensors, skipped))
}

fn read_entry(
    archive: &mut zip::ZipArchive<File>,
    name: &str,
    file_len: u64,
) -> Result<Vec<u8>, PthError> {
    let mut entry = archive.by_name(name)?;
    // The header's size is a hint only: never allocate more than the file could hold.
    let hint = entry.size().min(file_len);
    let mut bytes = Vec::with_capacity(usize::try_from(hint).unwrap_or(0));
    entry.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The pre-1.6 format: pickles of the magic number, the protocol version, the writer's sys info,
/// the object, and the sorted list of storage keys; then each storage as an 8-byte element
/// count and its raw bytes.
fn read_legacy(path: &Path) -> Result<Loaded, PthError> {
    let data = std::fs::read(path)?;
    let (magic, pos) = Machine::new("magic number").run(&data, 0)?;
    if !matches!(&magic, Value::BigInt(bytes) if bytes[..] == LEGACY_MAGIC) {
        return Err(PthError::NotACheckpoint(format!(
            "a Python pickle of {}, not a torch.save file (no torch magic number)",
            magic.describe()
        )));
    }
    let (version, pos) = Machine::new("protocol version").run(&data, pos)?;
    if !matches!(version, Value::Int(LEGACY_PROTOCOL_VERSION)) {
        return Err(PthError::Layout(format!(
            "legacy format version {}, expected {LEGACY_PROTOCOL_VERSION}",
            version.describe()
        )));
    }
    let (sys_info, pos) = Machine::new("sys info").run(&data, pos)?;
    let big_endian = match &sys_info {
        Value::Dict(pairs) => pairs.iter().any(
            |(k, v)| matches!((k, v), (Value::Str(k), Value::Bool(false)) if k == "little_endian"),
        ),
        _ => false,
    };
    let mut machine = Machine::new("the pickled object");
    let (root, pos) = machine.run(&data, pos)?;
    let (keys, mut pos) = Machine::new("storage keys").run(&data, pos)?;
    let keys = match keys {
        Value::List(keys) => keys,
        other => {
            return Err(PthError::Layout(format!(
                "the storage keys are {}, not a list",
                other.describe()
            )))
        }
    };
    // Where each storage's bytes lie in `data`.
    let mut spans: HashMap<String, std::ops::Range<usize>> = HashMap::new();
    for key in keys {
        let Value::Str(key) = key else {
            return Err(PthError::Layout(format!(
                "a storage key is {}, not a string",
                key.describe()
            )));
        };
        let kind = machine.storages.get(&key).copied().ok_or_else(|| {
            PthError::Layout(format!("storage `{key}` is listed, but no tensor uses it"))
        })?;
        let truncated = || {
            PthError::Layout(format!(
                "storage `{key}` at byte {pos}: the file is truncated"
            ))
        };
        let count = data.get(pos..pos + 8).ok_or_else(truncated)?;
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(count);
        let count = if big_endian {
            u64::from_be_bytes(bytes)
        } else {
            u64::from_le_bytes(bytes)
        };
        let start = pos + 8;
        let end = usize::try_from(count)
            .ok()
            .and_then(|n| n.checked_mul(kind.elt_size_in_bytes()))
            .and_then(|n| n.checked_add(start))
            .filter(|&end| end <= data.len())
            .ok_or_else(truncated)?;
        spans.insert(key, start..end);
        pos = end;
    }
    let (entries, skipped) = select_state_dict(root)?;
    let tensors = materialise(entries, big_endian, |key| {
        spans
            .get(key)
            .and_then(|span| data.get(span.clone()))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| PthError::Layout(format!("no data for storage `{key}`")))
    })?;
    Ok((tensors, skipped))
}

/// Builds each tensor from its storage's bytes (fetched once per storage and element kind),
/// with its offset, sizes and strides.
fn materialise(
    entries: Vec<(String, TensorRef)>,
    big_endian: bool,
    mut fetch: impl FnMut(&str) -> Result<Vec<u8>, PthError>,
) -> Result<Vec<(String, Tensor)>, PthError> {
    let mut storages: HashMap<(String, Kind), Tensor> = HashMap::new();
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, t) in entries {
        let storage = match storages.entry((t.storage.clone(), t.kind)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let bytes = fetch(&t.storage)?;
                e.insert(storage_tensor(&bytes, t.kind, big_endian)?)
            }
        };
        let tensor = view(storage, &t)
            .map_err(|message| PthError::Layout(format!("tensor `{name}`: {message}")))?;
        tensors.push((name, tensor));
    }
    Ok(tensors)
}

/// A storage's bytes as a 1-D tensor of `kind`.
fn storage_tensor(bytes: &[u8], kind: Kind, big_endian: bool) -> Result<Tensor, PthError> {
    let size = kind.elt_size_in_bytes();
    if bytes.len() % size != 0 {
        return Err(PthError::Layout(format!(
            "a storage of {} bytes is not a whole number of {kind:?} elements",
            bytes.len()
        )));
    }
    let numel = i64::try_from(bytes.len() / size)
        .map_err(|_| PthError::Layout("a storage too large to address".into()))?;
    let swapped: Vec<u8>;
    let data = if big_endian && size > 1 {
        swapped = bytes
            .chunks_exact(size)
            .flat_map(|c| c.iter().rev().copied())
            .collect();
        &swapped[..]
    } else {
        bytes
    };
    Ok(Tensor::f_from_data_size(data, &[numel], kind)?)
}

/// The tensor `t` describes, copied out of `storage` contiguously. Its layout is checked
/// against the storage here, so libtorch never sees one that does not fit.
fn view(storage: &Tensor, t: &TensorRef) -> Result<Tensor, String> {
    if t.size.len() != t.stride.len() {
        return Err(format!(
            "{} sizes but {} strides",
            t.size.len(),
            t.stride.len()
        ));
    }
    if t.offset < 0 || t.size.iter().chain(&t.stride).any(|&n| n < 0) {
        return Err(format!(
            "negative offset, size or stride (offset {}, sizes {:?}, strides {:?})",
            t.offset, t.size, t.stride
        ));
    }
    if t.size.contains(&0) {
        return Tensor::f_zeros(t.size.as_slice(), (t.kind, Device::Cpu))
            .map_err(|e| e.to_string());
    }
    let numel = storage.numel() as i64;
    let last = t
        .size
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |last, (&size, &stride)| {
            (size - 1).checked_mul(stride)?.checked_add(last)
        });
    match last {
        Some(last) if last < numel => {}
        _ => {
            return Err(format!(
                "sizes {:?}, strides {:?} from offset {} reach past its storage of {numel} \
                 elements",
                t.size, t.stride, t.offset
            ))
        }
    }
    storage
        .f_as_strided(t.size.as_slice(), t.stride.as_slice(), t.offset)
        .and_then(|v| v.f_contiguous())
        .map_err(|e| format!("libtorch: {e}"))
}

fn shorten(items: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut text = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        text.push_str(&format!(", … ({} in all)", items.len()));
    }
    text
}

/// The state dict in a file's top-level object: the object itself if it is a dict of tensors,
/// else the dict under `state_dict`, `model_state_dict` or `model` (training checkpoints), else
/// the object's tensor entries. Also returns the non-tensor entries skipped.
fn select_state_dict(root: Value) -> Result<Selected, PthError> {
    let mut pairs = match root {
        Value::Dict(pairs) => pairs,
        Value::Object(class) => {
            return Err(PthError::Layout(format!(
                "the file holds a pickled `{class}` object, not a state dict (save \
                 `model.state_dict()` instead)"
            )))
        }
        other => {
            return Err(PthError::Layout(format!(
                "the file holds {}, not a dict of tensors",
                other.describe()
            )))
        }
    };
    let is_tensor = |v: &Value| matches!(v, Value::Tensor(_));
    if pairs.iter().all(|(_, v)| is_tensor(v)) {
        return Ok(split_tensors(pairs));
    }
    for wrapper in ["state_dict", "model_state_dict", "model"] {
        // The last of repeated keys wins, as in Python.
        let found = pairs.iter().rposition(|(k, v)| {
            matches!(k, Value::Str(k) if k == wrapper)
                && matches!(v, Value::Dict(inner) if inner.iter().any(|(_, v)| is_tensor(v)))
        });
        if let Some(i) = found {
            if let (_, Value::Dict(inner)) = pairs.swap_remove(i) {
                return Ok(split_tensors(inner));
            }
        }
    }
    if pairs.iter().any(|(_, v)| is_tensor(v)) {
        return Ok(split_tensors(pairs));
    }
    let keys: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{} ({})", k.describe(), v.describe()))
        .collect();
    Err(PthError::Layout(format!(
        "no tensors found: the top-level entries are {} (a checkpoint's state dict is looked for \
         under `state_dict`, `model_state_dict` or `model`)",
        if keys.is_empty() {
            "none".to_owned()
        } else {
            shorten(&keys)
        }
    )))
}

/// A state dict's tensors, by name, and descriptions of the entries skipped.
type Selected = (Vec<(String, TensorRef)>, Vec<String>);

fn split_tensors(pairs: Vec<(Value, Value)>) -> Selected {
    let mut tensors = Vec::with_capacity(pairs.len());
    let mut skipped = Vec::new();
    for (key, value) in pairs {
        match (key, value) {
            (Value::Str(name), Value::Tensor(t)) => tensors.push((name, t)),
            (key, value) => skipped.push(format!("{} ({})", key.describe(), value.describe())),
        }
    }
    (tensors, skipped)
}

/// A storage a persistent id names: its key, the kind of its elements, and (legacy storage
/// views) the element its view starts at.
#[derive(Debug, Clone, PartialEq)]
struct StorageRef {
    key: String,
    kind: Kind,
    offset: i64,
}

/// A tensor as `torch._utils._rebuild_tensor_v2` describes it.
#[derive(Debug, Clone, PartialEq)]
struct TensorRef {
    storage: String,
    kind: Kind,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

/// A pickled value. Containers hold `Ref`s to memoised objects until `resolve`, so that
/// SETITEMS and APPENDS after a BINPUT fill the object that later BINGETs see.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// LONG1/LONG4 wider than 64 bits: little-endian two's complement.
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    /// What an unknown callable would have built, by the callable's name.
    Object(String),
    Storage(StorageRef),
    Tensor(TensorRef),
    Ref(usize),
}

impl Value {
    fn describe(&self) -> String {
        match self {
            Self::None => "None".into(),
            Self::Bool(b) => format!("the bool {b}"),
            Self::Int(i) => format!("the int {i}"),
            Self::BigInt(b) => format!("a {}-byte int", b.len()),
            Self::Float(f) => format!("the float {f}"),
            Self::Str(s) if s.chars().count() <= 40 => format!("the string {s:?}"),
            Self::Str(s) => format!("a {}-character string", s.chars().count()),
            Self::Bytes(b) => format!("{} bytes", b.len()),
            Self::Tuple(items) => format!("a tuple of {}", items.len()),
            Self::List(items) => format!("a list of {}", items.len()),
            Self::Dict(pairs) => format!("a dict of {}", pairs.len()),
            Self::Global(module, name) => format!("the global `{module}.{name}`"),
            Self::Object(class) => format!("a `{class}` object"),
            Self::Storage(s) => format!("storage `{}`", s.key),
            Self::Tensor(t) => format!("a {:?} tensor of shape {:?}", t.kind, t.size),
            Self::Ref(i) => format!("memo object {i}"),
        }
    }
}

/// A reader over one pickle's bytes.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let bytes = rest.get(..n).ok_or_else(|| {
            format!(
                "needs {n} bytes, {} left: the file is truncated",
                rest.len()
            )
        })?;
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    /// A length: 4 or 8 little-endian bytes.
    fn len32(&mut self) -> Result<usize, String> {
        usize::try_from(u32::from_le_bytes(self.array()?)).map_err(|e| e.to_string())
    }

    fn len64(&mut self) -> Result<usize, String> {
        usize::try_from(u64::from_le_bytes(self.array()?)).map_err(|e| e.to_string())
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("a line without its newline: the file is truncated")?;
        self.pos += n + 1;
        Ok(latin1(&rest[..n]))
    }
}

/// Python 2 `str` (BINSTRING, GLOBAL's names): bytes as Latin-1, as torch.load decodes them.
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Little-endian two's complement, as LONG1 and LONG4 write an int.
fn long(bytes: &[u8]) -> Value {
    if bytes.len() > 8 {
        return Value::BigInt(bytes.to_vec());
    }
    let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
    let mut full = if negative { [0xff; 8] } else { [0; 8] };
    full[..bytes.len()].copy_from_slice(bytes);
    Value::Int(i64::from_le_bytes(full))
}

/// The stack machine for one pickle. `storages` outlives the run: the storages the persistent
/// ids named, by key, with their element kinds.
struct Machine {
    part: &'static str,
    stack: Vec<Value>,
    marks: Vec<usize>,
    /// Memo ids to indices into `objects`.
    memo: HashMap<u32, usize>,
    objects: Vec<Value>,
    storages: HashMap<String, Kind>,
    resolved: usize,
}

impl Machine {
    fn new(part: &'static str) -> Self {
        Self {
            part,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            objects: Vec::new(),
            storages: HashMap::new(),
            resolved: 0,
        }
    }

    /// Runs the pickle that starts at `start` in `data` to its STOP; returns its value and
    /// where the next byte after it is.
    fn run(&mut self, data: &[u8], start: usize) -> Result<(Value, usize), PthError> {
        self.stack.clear();
        self.marks.clear();
        self.memo.clear();
        self.objects.clear();
        let mut cursor = Cursor { data, pos: start };
        loop {
            let at = cursor.pos;
            let step = cursor.u8().and_then(|op| self.step(op, &mut cursor));
            match step {
                Ok(Some(value)) => return Ok((value, cursor.pos)),
                Ok(None) => {}
                Err(message) => {
                    return Err(PthError::Pickle {
                        part: self.part,
                        at,
                        message,
                    })
                }
            }
        }
    }

    fn pop(&mut self) -> Result<Value, String> {
        if self.marks.last() == Some(&self.stack.len()) {
            return Err("pops past a MARK".into());
        }
        self.stack.pop().ok_or_else(|| "pops an empty stack".into())
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self.marks.pop().ok_or("no MARK to pop to")?;
        if mark > self.stack.len() {
            return Err("the stack is below its MARK".into());
        }
        Ok(self.stack.split_off(mark))
    }

    fn push(&mut self, value: Value) -> Result<Option<Value>, String> {
        self.stack.push(value);
        Ok(None)
    }

    /// The object on top of the stack, through its memo reference, to mutate.
    fn top_mut(&mut self) -> Result<&mut Value, String> {
        if self.marks.last() == Some(&self.stack.len()) {
            return Err("no object below the MARK".into());
        }
        match self.stack.last_mut() {
            Some(Value::Ref(i)) => {
                let i = *i;
                self.objects
                    .get_mut(i)
                    .ok_or_else(|| "a dangling memo".into())
            }
            Some(value) => Ok(value),
            None => Err("an empty stack".into()),
        }
    }

    fn memo_put(&mut self, id: u32) -> Result<Option<Value>, String> {
        let value = self.pop()?;
        let index = match value {
            Value::Ref(i) => i,
            value => {
                self.objects.push(value);
                self.objects.len() - 1
            }
        };
        self.memo.insert(id, index);
        self.push(Value::Ref(index))
    }

    fn memo_get(&mut self, id: u32) -> Result<Option<Value>, String> {
        let index = *self
            .memo
            .get(&id)
            .ok_or_else(|| format!("memo {id} was never stored"))?;
        self.push(Value::Ref(index))
    }

    /// `value` with every memo reference replaced by (a copy of) its object.
    fn resolve(&mut self, value: Value) -> Result<Value, String> {
        self.resolve_at(value, 0)
    }

    fn resolve_at(&mut self, value: Value, depth: usize) -> Result<Value, String> {
        self.resolved += 1;
        if depth > MAX_DEPTH || self.resolved > MAX_RESOLVED {
            return Err("objects nested too deeply, or referring to themselves".into());
        }
        Ok(match value {
            Value::Ref(i) => {
                let object = self.objects.get(i).cloned().ok_or("a dangling memo")?;
                self.resolve_at(object, depth + 1)?
            }
            Value::Tuple(items) => Value::Tuple(self.resolve_all(items, depth)?),
            Value::List(items) => Value::List(self.resolve_all(items, depth)?),
            Value::Dict(pairs) => Value::Dict(
                pairs
                    .into_iter()
                    .map(|(k, v)| {
                        Ok((
                            self.resolve_at(k, depth + 1)?,
                            self.resolve_at(v, depth + 1)?,
                        ))
                    })
                    .collect::<Result<_, String>>()?,
            ),
            other => other,
        })
    }

    fn resolve_all(&mut self, items: Vec<Value>, depth: usize) -> Result<Vec<Value>, String> {
        items
            .into_iter()
            .map(|v| self.resolve_at(v, depth + 1))
            .collect()
    }

    /// One opcode; Some(value) at STOP.
    fn step(&mut self, op: u8, r: &mut Cursor) -> Result<Option<Value>, String> {
        match op {
            // PROTO
            0x80 => {
                let version = r.u8()?;
                if version > 5 {
                    return Err(format!("pickle protocol {version}, expected at most 5"));
                }
                Ok(None)
            }
            // FRAME: frames only group opcodes.
            0x95 => r.take(8).map(|_| None),
            // GLOBAL
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                self.push(Value::Global(module, name))
            }
            // STACK_GLOBAL
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (self.resolve(module)?, self.resolve(name)?) {
                    (Value::Str(module), Value::Str(name)) => {
                        self.push(Value::Global(module, name))
                    }
                    _ => Err("STACK_GLOBAL of non-strings".into()),
                }
            }
            // BINPUT, LONG_BINPUT, MEMOIZE
            b'q' => {
                let id = r.u8()?;
                self.memo_put(u32::from(id))
            }
            b'r' => {
                let id = u32::from_le_bytes(r.array()?);
                self.memo_put(id)
            }
            0x94 => {
                let id = u32::try_from(self.memo.len()).map_err(|e| e.to_string())?;
                self.memo_put(id)
            }
            // BINGET, LONG_BINGET
            b'h' => {
                let id = r.u8()?;
                self.memo_get(u32::from(id))
            }
            b'j' => {
                let id = u32::from_le_bytes(r.array()?);
                self.memo_get(id)
            }
            // MARK
            b'(' => {
                self.marks.push(self.stack.len());
                Ok(None)
            }
            // EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE, EMPTY_SET (a set is read as a list)
            b'}' => self.push(Value::Dict(Vec::new())),
            b']' | 0x8f => self.push(Value::List(Vec::new())),
            b')' => self.push(Value::Tuple(Vec::new())),
            // TUPLE, TUPLE1/2/3, FROZENSET
            b't' => {
                let items = self.pop_mark()?;
                self.push(Value::Tuple(items))
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                if self.stack.len() < n + self.marks.last().copied().unwrap_or(0) {
                    return Err(format!("TUPLE{n} on a stack of fewer items"));
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push(Value::Tuple(items))
            }
            0x91 => {
                let items = self.pop_mark()?;
                self.push(Value::List(items))
            }
            // BININT, BININT1, BININT2, LONG1, LONG4
            b'J' => {
                let n = i32::from_le_bytes(r.array()?);
                self.push(Value::Int(i64::from(n)))
            }
            b'K' => {
                let n = r.u8()?;
                self.push(Value::Int(i64::from(n)))
            }
            b'M' => {
                let n = u16::from_le_bytes(r.array()?);
                self.push(Value::Int(i64::from(n)))
            }
            0x8a => {
                let n = usize::from(r.u8()?);
                let bytes = r.take(n)?;
                self.push(long(bytes))
            }
            0x8b => {
                let n = r.len32()?;
                let bytes = r.take(n)?;
                self.push(long(bytes))
            }
            // INT, LONG (text forms, protocols 0 and 1)
            b'I' | b'L' => {
                let text = r.line()?;
                let value = match text.as_str() {
                    "00" if op == b'I' => Value::Bool(false),
                    "01" if op == b'I' => Value::Bool(true),
                    digits => Value::Int(
                        digits
                            .trim_end_matches('L')
                            .parse()
                            .map_err(|_| format!("an int {digits:?} that does not fit 64 bits"))?,
                    ),
                };
                self.push(value)
            }
            // BINFLOAT: big-endian.
            b'G' => {
                let f = f64::from_be_bytes(r.array()?);
                self.push(Value::Float(f))
            }
            // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
            b'X' | 0x8c | 0x8d => {
                let n = match op {
                    b'X' => r.len32()?,
                    0x8c => usize::from(r.u8()?),
                    _ => r.len64()?,
                };
                let text = String::from_utf8(r.take(n)?.to_vec())
                    .map_err(|_| "a string that is not UTF-8".to_owned())?;
                self.push(Value::Str(text))
            }
            // BINSTRING, SHORT_BINSTRING (Python 2 str)
            b'T' | b'U' => {
                let n = if op == b'T' {
                    r.len32()?
                } else {
                    usize::from(r.u8()?)
                };
                let text = latin1(r.take(n)?);
                self.push(Value::Str(text))
            }
            // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8
            b'B' | b'C' | 0x8e | 0x96 => {
                let n = match op {
                    b'B' => r.len32()?,
                    b'C' => usize::from(r.u8()?),
                    _ => r.len64()?,
                };
                let bytes = r.take(n)?.to_vec();
                self.push(Value::Bytes(bytes))
            }
            // NONE, NEWTRUE, NEWFALSE
            b'N' => self.push(Value::None),
            0x88 => self.push(Value::Bool(true)),
            0x89 => self.push(Value::Bool(false)),
            // SETITEM, SETITEMS
            b's' => {
                let value = self.pop()?;
                let key = self.pop()?;
                self.set_items(vec![key, value])
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.set_items(items)
            }
            // APPEND, APPENDS, ADDITEMS
            b'a' => {
                let value = self.pop()?;
                self.append(vec![value])
            }
            b'e' | 0x90 => {
                let items = self.pop_mark()?;
                self.append(items)
            }
            // REDUCE
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let value = self.call(callable, args)?;
                self.push(value)
            }
            // NEWOBJ, NEWOBJ_EX: cls.__new__(cls, *args) is never a tensor.
            0x81 | 0x92 => {
                if op == 0x92 {
                    self.pop()?;
                }
                self.pop()?;
                let class = self.pop()?;
                let value = match self.resolve(class)? {
                    Value::Global(module, name) => dict_like(&module, &name)
                        .unwrap_or_else(|| Value::Object(format!("{module}.{name}"))),
                    other => return Err(format!("NEWOBJ of {}", other.describe())),
                };
                self.push(value)
            }
            // BUILD: sets an object's state, which nothing here needs (an OrderedDict's
            // `_metadata`, say).
            b'b' => {
                self.pop()?;
                self.top_mut().map(|_| None)
            }
            // BINPERSID
            b'Q' => {
                let id = self.pop()?;
                let value = self.persistent_load(id)?;
                self.push(value)
            }
            // POP, POP_MARK, DUP
            b'0' => {
                if self.marks.last() == Some(&self.stack.len()) {
                    self.marks.pop();
                } else {
                    self.pop()?;
                }
                Ok(None)
            }
            b'1' => self.pop_mark().map(|_| None),
            b'2' => {
                let top = self.stack.last().cloned().ok_or("DUP on an empty stack")?;
                self.push(top)
            }
            // STOP
            b'.' => {
                let value = self.pop()?;
                self.resolve(value).map(Some)
            }
            other => Err(format!("opcode 0x{other:02x} is not one torch.save writes")),
        }
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<Option<Value>, String> {
        if items.len() % 2 != 0 {
            return Err("SETITEMS with an odd number of items".into());
        }
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut items = items.into_iter();
        while let (Some(k), Some(v)) = (items.next(), items.next()) {
            pairs.push((k, v));
        }
        match self.top_mut()? {
            Value::Dict(existing) => existing.extend(pairs),
            // A dict subclass: its items are not needed.
            Value::Object(_) => {}
            other => return Err(format!("SETITEMS on {}", other.describe())),
        }
        Ok(None)
    }

    fn append(&mut self, items: Vec<Value>) -> Result<Option<Value>, String> {
        match self.top_mut()? {
            Value::List(existing) => existing.extend(items),
            Value::Object(_) => {}
            other => return Err(format!("APPENDS on {}", other.describe())),
        }
        Ok(None)
    }

    /// REDUCE: `callable(*args)`, for the callables torch.save's pickles use to rebuild tensors
    /// and dicts; any other call gives an opaque object.
    fn call(&mut self, callable: Value, args: Value) -> Result<Value, String> {
        let (module, name) = match self.resolve(callable)? {
            Value::Global(module, name) => (module, name),
            other => return Err(format!("REDUCE calls {}", other.describe())),
        };
        let args = match self.resolve(args)? {
            Value::Tuple(args) => args,
            other => return Err(format!("REDUCE with {} for arguments", other.describe())),
        };
        rebuild(&module, &name, args)
    }

    /// BINPERSID: torch's `('storage', torch.FloatStorage, key, location, numel[,
    /// view_metadata])`.
    fn persistent_load(&mut self, id: Value) -> Result<Value, String> {
        let items = match self.resolve(id)? {
            Value::Tuple(items) => items,
            other => return Err(format!("a persistent id that is {}", other.describe())),
        };
        match items.first() {
            Some(Value::Str(tag)) if tag == "storage" => {}
            // Legacy saves of whole modules name their classes' source this way.
            Some(Value::Str(tag)) if tag == "module" => return Ok(Value::None),
            _ => return Err("a persistent id that is not a storage's".into()),
        }
        let (type_name, key, rest) = match items.as_slice() {
            [_, Value::Global(_, type_name), key, _location, _numel, rest @ ..] => {
                (type_name, key, rest)
            }
            _ => return Err(format!("a storage id of {} fields", items.len())),
        };
        let kind = storage_kind(type_name)
            .ok_or_else(|| format!("storage type `{type_name}` is not supported"))?;
        let key = match key {
            Value::Str(key) => key.clone(),
            Value::Int(key) => key.to_string(),
            other => return Err(format!("a storage key that is {}", other.describe())),
        };
        // Legacy storage views: (view key, offset in elements, size) of the root storage.
        let offset = match rest.first() {
            Some(Value::Tuple(view)) => match view.as_slice() {
                [_, Value::Int(offset), _] => *offset,
                _ => return Err("a storage view that is not (key, offset, size)".into()),
            },
            _ => 0,
        };
        self.storages.entry(key.clone()).or_insert(kind);
        Ok(Value::Storage(StorageRef { key, kind, offset }))
    }
}

/// What `module.name()` builds, if it is a dict.
fn dict_like(module: &str, name: &str) -> Option<Value> {
    match (module, name) {
        ("collections", "OrderedDict" | "defaultdict") | ("builtins" | "__builtin__", "dict") => {
            Some(Value::Dict(Vec::new()))
        }
        _ => None,
    }
}

fn rebuild(module: &str, name: &str, args: Vec<Value>) -> Result<Value, String> {
    match (module, name) {
        ("torch._utils", "_rebuild_tensor" | "_rebuild_tensor_v2") => tensor(&args, None),
        ("torch._utils", "_rebuild_tensor_v3") => {
            let kind = match args.get(6) {
                Some(Value::Global(_, dtype)) => {
                    dtype_kind(dtype).ok_or_else(|| format!("dtype `{dtype}` is not supported"))?
                }
                _ => return Err("_rebuild_tensor_v3 without a dtype".into()),
            };
            tensor(&args, Some(kind))
        }
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            match args.into_iter().next() {
                Some(t @ Value::Tensor(_)) => Ok(t),
                _ => Ok(Value::Object(format!("{module}.{name}"))),
            }
        }
        // A tensor subclass: the inner call rebuilds the tensor.
        ("torch._tensor", "_rebuild_from_type_v2") => match args.as_slice() {
            [Value::Global(m, n), _, Value::Tuple(inner), ..] => rebuild(m, n, inner.clone()),
            _ => Err("_rebuild_from_type_v2 of unexpected arguments".into()),
        },
        // torch.Size(tuple), as torch 0.3 pickled sizes.
        ("torch", "Size") => match args.into_iter().next() {
            Some(Value::Tuple(items) | Value::List(items)) => Ok(Value::Tuple(items)),
            _ => Err("torch.Size of unexpected arguments".into()),
        },
        // Python 2's OrderedDict pickles its items as an argument: [[key, value], ...].
        ("collections", "OrderedDict") => {
            let mut pairs = Vec::new();
            if let Some(Value::List(items) | Value::Tuple(items)) = args.into_iter().next() {
                for item in items {
                    match item {
                        Value::List(kv) | Value::Tuple(kv) if kv.len() == 2 => {
                            let mut kv = kv.into_iter();
                            if let (Some(k), Some(v)) = (kv.next(), kv.next()) {
                                pairs.push((k, v));
                            }
                        }
                        _ => return Err("OrderedDict of items that are not pairs".into()),
                    }
                }
            }
            Ok(Value::Dict(pairs))
        }
        _ => Ok(
            dict_like(module, name).unwrap_or_else(|| Value::Object(format!("{module}.{name}")))
        ),
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, …)`.
fn tensor(args: &[Value], kind: Option<Kind>) -> Result<Value, String> {
    let [Value::Storage(storage), offset, size, stride, ..] = args else {
        return Err("a tensor rebuilt from other than (storage, offset, size, stride, …)".into());
    };
    let ints = |v: &Value, what: &str| match v {
        Value::Tuple(items) | Value::List(items) => items
            .iter()
            .map(|i| match i {
                Value::Int(i) => Ok(*i),
                other => Err(format!("a tensor {what} holding {}", other.describe())),
            })
            .collect::<Result<Vec<i64>, String>>(),
        other => Err(format!("a tensor {what} that is {}", other.describe())),
    };
    let Value::Int(offset) = offset else {
        return Err(format!("a storage offset that is {}", offset.describe()));
    };
    Ok(Value::Tensor(TensorRef {
        storage: storage.key.clone(),
        kind: kind.unwrap_or(storage.kind),
        offset: offset
            .checked_add(storage.offset)
            .ok_or("a storage offset out of range")?,
        size: ints(size, "size")?,
        stride: ints(stride, "stride")?,
    }))
}

/// `torch.FloatStorage` and its kin (what torch.save names storages by, even untyped ones).
fn storage_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" | "UntypedStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

/// A `torch.<dtype>` global's name.
fn dtype_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "float32" | "float" => Kind::Float,
        "float64" | "double" => Kind::Double,
        "float16" | "half" => Kind::Half,
        "bfloat16" => Kind::BFloat16,
        "int64" | "long" => Kind::Int64,
        "int32" | "int" => Kind::Int,
        "int16" | "short" => Kind::Int16,
        "int8" => Kind::Int8,
        "uint8" => Kind::Uint8,
        "bool" => Kind::Bool,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Result<Value, PthError> {
        Machine::new("test").run(bytes, 0).map(|(v, _)| v)
    }

    fn s(text: &str) -> Value {
        Value::Str(text.into())
    }

    #[test]
    fn a_dict_filled_after_its_binput_is_seen_whole_through_binget() {
        // {'a': 1}, memoised before SETITEMS, then fetched again: (d, d).
        let pickle = b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01uh\x00\x86.";
        let d = Value::Dict(vec![(s("a"), Value::Int(1))]);
        assert_eq!(run(pickle).unwrap(), Value::Tuple(vec![d.clone(), d]));
    }

    #[test]
    fn scalars_decode() {
        // (-2, 300, 2**40, 0.7, True, None, b'xy', 'é' as BINSTRING latin-1)
        let pickle = b"\x80\x02(J\xfe\xff\xff\xffM,\x01\x8a\x06\x00\x00\x00\x00\x00\x01G?\xe6ffffff\x88NC\x02xyU\x01\xe9t.";
        assert_eq!(
            run(pickle).unwrap(),
            Value::Tuple(vec![
                Value::Int(-2),
                Value::Int(300),
                Value::Int(1 << 40),
                Value::Float(0.7),
                Value::Bool(true),
                Value::None,
                Value::Bytes(b"xy".to_vec()),
                s("é"),
            ])
        );
    }

    #[test]
    fn python2_ordered_dict_items_come_from_its_argument() {
        // OrderedDict([['w', 1]]) as Python 2.7 pickles it.
        let pickle =
            b"\x80\x02ccollections\nOrderedDict\nq\x00]q\x01]q\x02(U\x01wK\x01ea\x85Rq\x03.";
        assert_eq!(
            run(pickle).unwrap(),
            Value::Dict(vec![(s("w"), Value::Int(1))])
        );
    }

    #[test]
    fn a_tensor_is_rebuilt_from_its_persistent_storage() {
        let pickle = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nHalfStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQK\x01K\x02K\x02\x86K\x01K\x03\x86\x89ccollections\nOrderedDict\n)RtR.";
        let mut machine = Machine::new("test");
        let (value, end) = machine.run(pickle, 0).unwrap();
        assert_eq!(end, pickle.len());
        assert_eq!(machine.storages.get("0"), Some(&Kind::Half));
        assert_eq!(
            value,
            Value::Tensor(TensorRef {
                storage: "0".into(),
                kind: Kind::Half,
                offset: 1,
                size: vec![2, 2],
                stride: vec![1, 3],
            })
        );
        let storage = storage_tensor(&[0u8; 12], Kind::Half, false).unwrap();
        let Value::Tensor(t) = value else {
            unreachable!()
        };
        assert_eq!(view(&storage, &t).unwrap().size(), vec![2, 2]);
        // The same layout from offset 2 would read element 6 of 6.
        let past = TensorRef { offset: 2, ..t };
        assert!(view(&storage, &past).unwrap_err().contains("reach past"));
    }

    #[test]
    fn unknown_callables_stay_opaque() {
        let pickle = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.";
        assert_eq!(run(pickle).unwrap(), Value::Object("os.system".into()));
    }

    #[test]
    fn bad_pickles_are_errors_not_panics() {
        for (pickle, want) in [
            (&b"\x80\x02}q\x00(X\x05\x00\x00\x00ab"[..], "truncated"),
            (b"\x80\x02h\x07.", "never stored"),
            (b"\x80\x02K\x01u.", "no MARK"),
            (b"\x80\x02S'x'\n.", "not one torch.save writes"),
            (b"\x80\x02.", "empty stack"),
            (b"", "truncated"),
            // A list that holds itself.
            (b"\x80\x02]q\x00h\x00a.", "referring to themselves"),
        ] {
            let err = run(pickle).unwrap_err().to_string();
            assert!(err.contains(want), "{pickle:?}: {err}");
        }
    }

    #[test]
    fn files_are_told_apart_by_their_first_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let header = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut st = (header.len() as u64).to_le_bytes().to_vec();
        st.extend_from_slice(header);
        st.extend_from_slice(&[0; 4]);
        assert_eq!(detect(&write("w.bin", &st)).unwrap(), Format::Safetensors);
        assert_eq!(
            detect(&write("w.pt", b"PK\x03\x04rest")).unwrap(),
            Format::Zip
        );
        assert_eq!(
            detect(&write("w.pth", b"\x80\x02}.")).unwrap(),
            Format::Legacy
        );
        let err = detect(&write("w.pth.tar", b"gene,family\n")).unwrap_err();
        assert!(err.to_string().contains("found text starting"), "{err}");
        let err = detect(&write("empty.pth", b"")).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        // A pickle, but not torch's.
        let err = read_tensors(&write("plain.pkl", b"\x80\x02}.")).unwrap_err();
        assert!(err.to_string().contains("no torch magic number"), "{err}");
    }
}
