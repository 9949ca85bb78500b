#!/usr/bin/env python3
"""Times training epochs of the OFFICIAL HDMoE code (github.com/ZJUMAI/HDMoE) on the CPU, so that
`make bench` can set our `fit` beside it on the same data, features and machine.

Nothing of the official code is copied here: it is imported from the checkout named by --official
and driven the way its main.py drives one fold, with run.sh's arguments.

Usage
  # synthetic bags, one <slide_stem>.h5 per slide of the cohort (`features` [N, 1024] float32):
  bench_fit_official.py --make-synthetic-features 500 --cohort COHORT.csv --features DIR
  # one fold of the official training, timed:
  bench_fit_official.py --official CHECKOUT --cohort COHORT.csv --signatures signatures.csv \
      --splits SPLITS_DIR --features DIR --work SCRATCH [--fold 0] [--epochs 1] [--threads 2]

What it does
  1. Converts each <features>/<slide_stem>.h5 of the cohort to <work>/pt_files/<stem>.pt (torch.save of
     its float32 [N, 1024] tensor), skipping those already converted from the same, unchanged h5
     (pt_files/sources.json). The .pt name is the official loader's own: slide_id.rstrip('.svs') + '.pt'.
  2. Lays out, by symlinks in <work>, what the official code opens relative to its working directory:
     csv/tcga_blca_all_clean/tcga_blca_all_clean.csv (main.py), csv/signatures.csv (the dataset reads
     './csv/signatures.csv'), splits/5foldcv/tcga_blca/splits_K.csv; then chdirs to <work>.
  3. Parses run.sh's arguments with the official utils/options.py parse_args (through sys.argv), with
     --data_root_dir <work> and --num_epoch <epochs>, seed left at its default (1), and runs main.py's
     per-fold body for the one fold: set_seed, Generic_MIL_Survival_Dataset, return_splits,
     get_split_loader (train: WeightedRandomSampler, as --weighted_sample is always True), HDMoE,
     define_loss, define_optimizer, define_scheduler, Engine(args, results_dir, fold).learning(...).
  4. Times every Engine.train and Engine.validate call (time.perf_counter around the official methods)
     and prints one JSON line on stdout:
       {"train_s": [per epoch], "validate_s": [...], "epoch_s": [train + validate], "n_train", "n_val",
        "torch", "threads", and extras: "checkpoint_s" (each Engine.save_checkpoint, which learning()
        runs outside train/validate), "learning_s" (all of Engine.learning), "setup_s" (dataset, splits,
        scaler, loaders, model), "fold", "epochs", "best_val_c_index", "numpy", "pandas", "shims"}.
     Everything the official code prints (its per-step `print('loss', loss)`, tqdm bars, warnings)
     goes to <work>/official.log; our own progress notes go to stderr.

Python packages it needs besides torch: numpy pandas<3 scikit-learn scikit-survival tqdm tensorboard
einops h5py (pandas 2.x is what the official code was written for; see the pandas shim below).

Shims (only what stops the official code running here; each is applied at run time, the checkout is
never modified, and the JSON's "shims" lists those applied):
  * torch.Tensor.cuda -> identity, only when CUDA is unavailable. models/hdmoe/network.py calls
    `self.cls_token.expand(...).cuda()` unconditionally in Transformer_P.forward and
    Transformer_G.forward; on a CPU-only torch that raises. Everything else in the official code
    guards its .cuda() calls with torch.cuda.is_available().
  * Generic_Split.OOM = args.OOM (0). Generic_Split.__init__ does not call its parent's __init__, so
    the `OOM` attribute that Generic_MIL_Survival_Dataset.__getitem__ reads (`if self.OOM > 0`) never
    exists on the train/val splits: every __getitem__ raises AttributeError. 0 is the official default
    (no patch subsampling), i.e. what the parent would have set.
  * numpy >= 2.4 only: Engine.train/validate store per-patient values with
    `all_risk_scores[batch_idx] = risk` (risk has shape (1,)), `all_event_times[batch_idx] = event_time`
    (np.array of shape (1,) from the collate function) and `all_censorships[batch_idx] = c.cpu().numpy()`.
    Assigning a size-1 array to a scalar slot was deprecated in numpy 1.25 and is an error
    ("setting an array element with a sequence") from 2.4 on. The shim gives the engine module a numpy
    whose `zeros` returns an ndarray subclass that reshapes a size-1 array to a scalar on __setitem__;
    everything else in that module's `np` is numpy itself. With numpy < 2.4 no shim is applied.
  * pandas >= 3 only (none with pandas 2.x): the dataset builds each omic vector with
    torch.tensor(series), a Series indexed by gene names. torch reads it as a Python sequence,
    series[0], series[1], ...; pandas 2.x treats those integer keys as positions (with a FutureWarning
    per element), pandas 3 as labels, so it fails ("could not determine the shape of object type
    'Series'"). The shim gives the dataset module a torch whose tensor() takes Series.to_list() instead,
    which is much cheaper than pandas 2.x's per-element path (about 0.1 s per patient on this machine),
    so prefer pandas<3 for a timing that matches the official code.
  Not shimmed because they are not broken: the omic tensors are float64 out of the dataset, but the
  official collate_MIL_survival_sig casts them with .type(torch.FloatTensor), so the CPU path (which
  skips the engine's CUDA-only casts) gets float32 all the same; the path tensor is the float32 we save.
  get_split_loader passes num_workers=0 only under CUDA; on the CPU it passes nothing, which is the same
  (DataLoader's default is 0).

Upstream quirks that are kept as they are (a fair comparison must know them): the train loader is a
WeightedRandomSampler over the 8 (bin, censorship) classes, WITH replacement, len(train) draws per
epoch; each step torch.load()s the patient's .pt files (the loading is inside the timed train/validate);
every step prints the loss tensor; validation runs the model under no_grad on every val patient,
computes the same losses, and the C-index with sksurv's concordance_index_censored (train computes one
too); learning() sets the lr to lr*(1-epoch/num_epoch)^0.9 each epoch, writes 4 tensorboard scalars
per epoch, and torch.save()s a checkpoint each time the val C-index improves on the best (epoch 0
always does, its best starts at 0), deleting the previous one. The genomic groups are those of
Generic_Split: its metadata is the first 12 columns after a reordering that moves the table's LAST
column (ZXDC_rnaseq in the MCAT BLCA table) into them, so that gene is dropped (BLCA's sizes come out
[94, 334, 521, 468, 1495, 479], Transcription Factors 1495 rather than 1496), while the table's `train`
column stays among the genomic features (standard-scaled, in no group).
"""
import argparse
import contextlib
import hashlib
import json
import os
import sys
import time


def note(msg):
    print("[bench_fit_official] " + msg, file=_REAL_STDERR, flush=True)


def die(msg):
    note("error: " + msg)
    sys.exit(2)


_REAL_STDERR = sys.stderr


# --------------------------------------------------------------------------------------------------
# inputs


def slide_stem(slide_id):
    """Our feature files are named by the slide id without its extension (`….svs` -> `….h5`)."""
    for ext in (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".bif"):
        if slide_id.endswith(ext):
            return slide_id[: -len(ext)]
    return slide_id


def official_pt_name(slide_id):
    """The official loader's file name: '{}.pt'.format(slide_id.rstrip('.svs')) (a character strip)."""
    return "{}.pt".format(slide_id.rstrip(".svs"))


def read_cohort(path):
    """(case_id, slide_id) of every row of a cohort csv (the MCAT/PORPOISE tables)."""
    import csv

    if not os.path.isfile(path):
        die("cohort csv not found: %s" % path)
    with open(path, newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            die("cohort csv is empty: %s" % path)
        for col in ("case_id", "slide_id"):
            if col not in header:
                die("cohort csv %s has no `%s` column (header starts %s)" % (path, col, header[:6]))
        ci, si = header.index("case_id"), header.index("slide_id")
        rows = [(r[ci], r[si]) for r in reader if len(r) > max(ci, si)]
    if not rows:
        die("cohort csv has no rows: %s" % path)
    return rows


def make_synthetic_features(cohort, features_dir, n_patches, dim=1024):
    """One <stem>.h5 per slide of the cohort: `features` = standard normal float32 [n_patches, dim]
    from numpy's default_rng seeded by the first 8 bytes of sha256(stem), so every run (and every
    machine) writes the same bags; plus a `coords` int64 [n_patches, 2] grid of 256-px patches."""
    import h5py
    import numpy as np

    os.makedirs(features_dir, exist_ok=True)
    stems = sorted({slide_stem(s) for _, s in read_cohort(cohort)})
    side = int(np.ceil(np.sqrt(n_patches)))
    idx = np.arange(n_patches, dtype=np.int64)
    coords = np.stack([idx % side, idx // side], axis=1) * 256
    written = 0
    for stem in stems:
        path = os.path.join(features_dir, stem + ".h5")
        seed = int.from_bytes(hashlib.sha256(stem.encode()).digest()[:8], "little")
        x = np.random.default_rng(seed).standard_normal((n_patches, dim), dtype=np.float32)
        tmp = path + ".tmp"
        with h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=x)
            f.create_dataset("coords", data=coords)
        os.replace(tmp, path)
        written += 1
    note("wrote %d synthetic bags [%d, %d] to %s" % (written, n_patches, dim, features_dir))


def convert_features(cohort_rows, case_ids, features_dir, work):
    """h5 -> <work>/pt_files/*.pt for the slides of `case_ids`. Returns (converted, up_to_date).

    A .pt is up to date when <work>/pt_files/sources.json records that it was made from the same h5
    (absolute path, size, mtime_ns); a .pt of a slide whose h5 is absent is removed, so that the
    official loader skips that slide rather than read a stale bag from an earlier --features."""
    import h5py
    import numpy as np
    import torch

    if not os.path.isdir(features_dir):
        die("features directory not found: %s" % features_dir)
    pt_dir = os.path.join(work, "pt_files")
    os.makedirs(pt_dir, exist_ok=True)
    manifest_path = os.path.join(pt_dir, "sources.json")
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        manifest = {}
    slides = {}
    for case, slide in cohort_rows:
        if case in case_ids:
            slides.setdefault(case, []).append(slide)
    converted = fresh = 0
    try:
        for case in sorted(case_ids):
            if case not in slides:
                die("case %s of the split is not in the cohort csv" % case)
            found = 0
            for slide in slides[case]:
                h5 = os.path.abspath(os.path.join(features_dir, slide_stem(slide) + ".h5"))
                name = official_pt_name(slide)
                pt = os.path.join(pt_dir, name)
                if not os.path.isfile(h5):
                    note("warning: no features for slide %s (%s); the official loader skips it" % (slide, h5))
                    if os.path.exists(pt):
                        os.remove(pt)
                    manifest.pop(name, None)
                    continue
                found += 1
                st = os.stat(h5)
                source = [h5, st.st_size, st.st_mtime_ns]
                if os.path.isfile(pt) and manifest.get(name) == source:
                    fresh += 1
                    continue
                try:
                    with h5py.File(h5, "r") as f:
                        if "features" not in f:
                            die("%s has no `features` dataset" % h5)
                        x = np.ascontiguousarray(f["features"][()], dtype=np.float32)
                except OSError as e:
                    die("cannot read %s: %s" % (h5, e))
                if x.ndim != 2:
                    die("%s: `features` has shape %s, expected [N, 1024]" % (h5, x.shape))
                tmp = pt + ".tmp"
                torch.save(torch.from_numpy(x), tmp)
                os.replace(tmp, pt)
                manifest[name] = source
                converted += 1
            if found == 0:
                die("no slide features for case %s: expected %s" % (
                    case, ", ".join(os.path.join(features_dir, slide_stem(s) + ".h5") for s in slides[case])))
    finally:
        tmp = manifest_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(manifest, f)
        os.replace(tmp, manifest_path)
    return converted, fresh


def split_cases(path):
    """train and val case_ids of a splits_K.csv (header `,train,val`; val runs out first)."""
    import csv

    if not os.path.isfile(path):
        die("split file not found: %s" % path)
    train, val = set(), set()
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        if "train" not in header or "val" not in header:
            die("split file %s has no train/val columns (header %s)" % (path, header))
        ti, vi = header.index("train"), header.index("val")
        for r in reader:
            if len(r) > ti and r[ti]:
                train.add(r[ti])
            if len(r) > vi and r[vi]:
                val.add(r[vi])
    return train, val


def symlink(target, link):
    target = os.path.abspath(target)
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if os.path.islink(link) or os.path.exists(link):
        if os.path.islink(link) and os.readlink(link) == target:
            return
        os.remove(link)
    os.symlink(target, link)


# --------------------------------------------------------------------------------------------------
# shims (see the module docstring)


def apply_shims(torch, np, engine_module, dataset_module):
    applied = []
    import pandas

    if int(pandas.__version__.split(".")[0]) >= 3:

        class DatasetTorch:
            def __getattr__(self, name):
                return getattr(torch, name)

            @staticmethod
            def tensor(data, *args, **kwargs):
                if isinstance(data, pandas.Series):
                    data = data.to_list()
                return torch.tensor(data, *args, **kwargs)

        dataset_module.torch = DatasetTorch()
        applied.append("dataset torch.tensor(Series) -> torch.tensor(Series.to_list()) (pandas %s)"
                       % pandas.__version__)
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
        applied.append("torch.Tensor.cuda -> identity (no CUDA)")

    if tuple(int(p) for p in np.__version__.split(".")[:2]) >= (2, 4):

        class ScalarSlots(np.ndarray):
            def __setitem__(self, key, value):
                if isinstance(value, np.ndarray) and value.ndim > 0 and value.size == 1:
                    value = value.reshape(())
                super().__setitem__(key, value)

        class EngineNumpy:
            def __getattr__(self, name):
                return getattr(np, name)

            @staticmethod
            def zeros(*args, **kwargs):
                return np.zeros(*args, **kwargs).view(ScalarSlots)

        engine_module.np = EngineNumpy()
        applied.append("engine np.zeros -> size-1 arrays stored as scalars (numpy %s)" % np.__version__)
    return applied


@contextlib.contextmanager
def output_to(log_path):
    """fd 1 and 2 (Python's and C's) to the log for the duration; restored on the way out."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log = open(log_path, "a")
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        log.close()


# --------------------------------------------------------------------------------------------------
# the official run


def run_official(a):
    official = os.path.abspath(a.official)
    for rel in ("main.py", "datasets/dataset_survival.py", "models/hdmoe/network.py",
                "models/hdmoe/engine.py", "utils/options.py", "utils/util.py", "utils/loss.py",
                "utils/optimizer.py", "utils/scheduler.py"):
        if not os.path.isfile(os.path.join(official, rel)):
            die("not an HDMoE checkout: %s is missing" % os.path.join(official, rel))
    for name, path in (("--signatures", a.signatures),):
        if not os.path.isfile(path):
            die("%s file not found: %s" % (name, path))
    split_file = os.path.join(a.splits, "splits_%d.csv" % a.fold)
    train_ids, val_ids = split_cases(split_file)
    cohort_rows = read_cohort(a.cohort)

    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(a.threads))
    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    work = os.path.abspath(a.work)
    os.makedirs(work, exist_ok=True)

    t0 = time.perf_counter()
    converted, fresh = convert_features(cohort_rows, train_ids | val_ids, a.features, work)
    note("features: %d converted to %s, %d already up to date (%.1f s)" % (
        converted, os.path.join(work, "pt_files"), fresh, time.perf_counter() - t0))

    dataset_name = "tcga_blca"
    symlink(a.cohort, os.path.join(work, "csv", "%s_all_clean" % dataset_name, "%s_all_clean.csv" % dataset_name))
    symlink(a.signatures, os.path.join(work, "csv", "signatures.csv"))
    symlink(split_file, os.path.join(work, "splits", "5foldcv", dataset_name, "splits_%d.csv" % a.fold))
    os.chdir(work)
    sys.path.insert(0, official)
    log_path = os.path.join(work, "official.log")
    with open(log_path, "w"):
        pass

    with output_to(log_path):
        from datasets.dataset_survival import Generic_MIL_Survival_Dataset, Generic_Split
        from utils.options import parse_args
        from utils.util import get_split_loader, set_seed
        from utils.loss import define_loss
        from utils.optimizer import define_optimizer
        from utils.scheduler import define_scheduler
        from models.hdmoe.network import HDMoE
        import models.hdmoe.engine as engine_module
        from models.hdmoe.engine import Engine

        import datasets.dataset_survival as dataset_module

        shims = apply_shims(torch, np, engine_module, dataset_module)

        argv = ["main.py", "--which_splits", "5foldcv", "--dataset", dataset_name,
                "--data_root_dir", work, "--modal", "coattn", "--model", "hdmoe",
                "--num_epoch", str(a.epochs), "--batch_size", "1", "--loss", "nll_surv_cos",
                "--lr", "0.0005", "--optimizer", "Adam", "--scheduler", "None", "--alpha", "1",
                "--top_k", "1", "--n_routed_experts", "8", "--gate_dim", "256",
                "--n_shared_experts", "True"]
        saved_argv, sys.argv = sys.argv, argv
        try:
            args = parse_args()
        finally:
            sys.argv = saved_argv
        print("bench_fit_official: args", vars(args), "shims", shims, flush=True)

        # main.py: set_seed once, results dir, then the per-fold body for fold a.fold.
        set_seed(args.seed)
        results_dir = "./result/{}/[{}]-[{}]-[{}]-[{}]".format(
            args.dataset, args.model, args.fusion, args.alpha, time.strftime("%Y-%m-%d]-[%H-%M-%S"))
        os.makedirs(results_dir, exist_ok=True)
        t_setup = time.perf_counter()
        dataset = Generic_MIL_Survival_Dataset(
            csv_path="./csv/tcga_blca_all_clean/%s_all_clean.csv" % args.dataset,
            modal=args.modal, OOM=args.OOM, apply_sig=True, data_dir=args.data_root_dir,
            shuffle=False, seed=args.seed, patient_strat=False, n_bins=4, label_col="survival_months")
        split_dir = os.path.join("./splits", args.which_splits, args.dataset)
        train_dataset, val_dataset = dataset.return_splits(
            from_id=False, csv_path="{}/splits_{}.csv".format(split_dir, a.fold))
        # shim: Generic_Split never sets the OOM its inherited __getitem__ reads.
        if not hasattr(Generic_Split, "OOM"):
            Generic_Split.OOM = args.OOM
            shims.append("Generic_Split.OOM = %r (its __getitem__ reads it, nothing sets it)" % args.OOM)
        train_loader = get_split_loader(train_dataset, training=True, weighted=args.weighted_sample,
                                        modal=args.modal, batch_size=args.batch_size)
        val_loader = get_split_loader(val_dataset, modal=args.modal, batch_size=args.batch_size)
        print("training: {}, validation: {}".format(len(train_dataset), len(val_dataset)))
        print(train_dataset.omic_sizes)
        model = HDMoE(args=args, omic_sizes=train_dataset.omic_sizes, n_classes=4,
                      fusion=args.fusion, model_size=args.model_size)
        criterion = define_loss(args)
        optimizer = define_optimizer(args, model)
        scheduler = define_scheduler(args, optimizer)
        engine = Engine(args, results_dir, a.fold)
        setup_s = time.perf_counter() - t_setup

        times = {"train_s": [], "validate_s": [], "checkpoint_s": []}

        def timed(name, method):
            def wrapper(*args_, **kwargs_):
                t = time.perf_counter()
                try:
                    return method(*args_, **kwargs_)
                finally:
                    times[name].append(time.perf_counter() - t)
            return wrapper

        engine.train = timed("train_s", engine.train)
        engine.validate = timed("validate_s", engine.validate)
        engine.save_checkpoint = timed("checkpoint_s", engine.save_checkpoint)

        t = time.perf_counter()
        best_score, best_epoch = engine.learning(model, train_loader, val_loader, criterion, optimizer, scheduler)
        learning_s = time.perf_counter() - t
        if getattr(engine, "writer", None) is not None:
            engine.writer.close()
        print("best c-index", best_score, "at epoch", best_epoch, flush=True)

    import pandas

    result = {
        "train_s": [round(x, 4) for x in times["train_s"]],
        "validate_s": [round(x, 4) for x in times["validate_s"]],
        "epoch_s": [round(x + y, 4) for x, y in zip(times["train_s"], times["validate_s"])],
        "n_train": len(train_dataset),
        "n_val": len(val_dataset),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "checkpoint_s": [round(x, 4) for x in times["checkpoint_s"]],
        "learning_s": round(learning_s, 4),
        "setup_s": round(setup_s, 4),
        "fold": a.fold,
        "epochs": a.epochs,
        "best_val_c_index": float(best_score),
        "numpy": np.__version__,
        "pandas": pandas.__version__,
        "shims": shims,
    }
    note("log of the official code: %s" % log_path)
    print(json.dumps(result), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", help="HDMoE checkout (main.py, datasets/, models/, utils/)")
    p.add_argument("--cohort", required=True, help="cohort csv (e.g. tcga_blca_all_clean.csv)")
    p.add_argument("--signatures", help="signatures.csv")
    p.add_argument("--splits", help="folder holding splits_K.csv")
    p.add_argument("--features", required=True, help="folder of <slide_stem>.h5 (`features` [N, 1024])")
    p.add_argument("--work", help="scratch folder (pt_files/, csv/, splits/, result/, official.log)")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--make-synthetic-features", type=int, metavar="N",
                   help="only write synthetic bags of N patches for every slide of --cohort to --features")
    a = p.parse_args()
    if a.make_synthetic_features is not None:
        if a.make_synthetic_features < 1:
            die("--make-synthetic-features needs N >= 1")
        make_synthetic_features(a.cohort, a.features, a.make_synthetic_features)
        return
    missing = [f for f in ("official", "signatures", "splits", "work") if getattr(a, f) is None]
    if missing:
        p.error("missing: " + ", ".join("--" + m for m in missing))
    if not os.path.isdir(a.official):
        die("official checkout not found: %s" % a.official)
    if not os.path.isdir(a.splits):
        die("splits folder not found: %s" % a.splits)
    if a.epochs < 1 or a.threads < 1:
        die("--epochs and --threads must be >= 1")
    run_official(a)


if __name__ == "__main__":
    main()
