"""Print the README's results tables (Markdown) from benchmarks/results/*.json.

    .venv/bin/python benchmarks/tables.py
"""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PAPER = {"lenet-300-100": ("1.64% -> 1.58%", "40x"), "lenet-5": ("0.80% -> 0.74%", "39x")}


def main() -> None:
    deep_compression()
    print()
    distillation()
    print()
    soft_weight_sharing()
    print()
    structured()
    print()
    quantization()
    print()
    real_models()
    print()
    scale()


def deep_compression() -> None:
    dc = json.loads((RESULTS / "deep_compression.json").read_text())
    print("| model (full MNIST) | error before -> after | dense -> file | ratio | paper |")
    print("|---|---|---|---|---|")
    for name in ("lenet-300-100", "lenet-5"):
        r = dc[name]
        print(f"| {name} | {100 * (1 - r['accuracy_before']):.2f}% -> {100 * (1 - r['accuracy_after']):.2f}% "
              f"| {r['dense_bytes']:,} B -> {r['file_bytes']:,} B | **{r['compression_ratio']:.1f}x** "
              f"| {PAPER[name][0]}, {PAPER[name][1]} |")
    for spec in sorted(RESULTS.glob("mnist5k-*.json")):
        r = json.loads(spec.read_text())
        print(f"| {r['model']} (built-in mnist5k, CLI) | {100 * (1 - r['accuracy_before']):.2f}% -> "
              f"{100 * (1 - r['accuracy_after']):.2f}% | {r['dense_bytes']:,} B -> {r['file_bytes']:,} B "
              f"| **{r['compression_ratio']:.1f}x** | |")
    print()
    for name in ("lenet-300-100", "lenet-5"):
        print(f"{name}, per layer:\n")
        layer_table(dc[name]["layers"])
        print()
    stock, ours = dc["stock_route"], dc["lenet-300-100"]
    print("| LeNet-300-100, same sparsity and bits | file | ratio | accuracy |")
    print("|---|---|---|---|")
    print(f"| stock: torch.nn.utils.prune + sklearn KMeans + lzma(state_dict) | {stock['file_bytes']:,} B "
          f"| {stock['compression_ratio']:.1f}x | {100 * stock['accuracy_after']:.2f}% |")
    print(f"| modelzip deep-compression | {ours['file_bytes']:,} B | {ours['compression_ratio']:.1f}x "
          f"| {100 * ours['accuracy_after']:.2f}% |")
    print(f"\nmodelzip's file is {stock['file_bytes'] / ours['file_bytes']:.2f}x smaller. Huffman: "
          f"{dc['huffman_bits_over_entropy']:.4f}x the entropy per symbol "
          f"({dc['huffman_stream_bits_over_entropy']:.4f}x with the code tables). "
          f"`modelzip.load` takes {dc['load_time_ratio']:.2f}x the time of `torch.load` of the dense state_dict.")



def layer_table(rows: list[dict]) -> None:
    print("| layer | weights | kept | weight bits P+Q / Huffman | index bits P+Q / Huffman | bytes | ratio |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        index = f"{row['index_bits_pq']} / {row['index_bits']:.2f}" if row["index_bits"] else "- (dense)"
        print(f"| {row['name']} | {row['weights']:,} | {100 * row['kept_fraction']:.1f}% "
              f"| {row['weight_bits_pq']} / {row['weight_bits']:.2f} | {index} | {row['bytes']:,} "
              f"| {row['compression_ratio']:.1f}x |")


def distillation() -> None:
    d = json.loads((RESULTS / "distillation.json").read_text())
    print("| MNIST, test errors of 10,000 | modelzip | paper |")
    print("|---|---|---|")
    for key, label, paper in (("teacher_errors", "teacher 784-1200-1200 (dropout, jitter 2 px)", 67),
                              ("student_errors", "student 784-800-800 alone", 146),
                              ("distilled_errors", "student distilled at T=20", 74)):
        print(f"| {label} | {d[key]} | {paper} |")
    print(f"| share of the student-teacher gap closed | {100 * d['gap_closed']:.0f}% | 91% |")
    small = RESULTS / "distillation-mnist5k.json"
    if small.exists():
        k = json.loads(small.read_text())
        print(f"| built-in mnist5k (4,000 train, {k['test_examples']:,} test): teacher / alone / distilled errors "
              f"| {k['teacher_errors']} / {k['student_errors']} / {k['distilled_errors']} "
              f"({100 * k['gap_closed']:.0f}% of the gap) | |")
    print(f"| no 3s in the transfer set: test 3s right, before -> after bias +{d['omitted3_bias_offset']:g} "
          f"| {100 * d['omitted3_threes_correct_before']:.1f}% -> {100 * d['omitted3_threes_correct_after']:.1f}% "
          f"| 86.8% -> 98.6% (+3.5) |")
    print(f"| no 3s: all test errors, before -> after | {d['omitted3_errors_before']} -> {d['omitted3_errors_after']} "
          f"| 206 -> 109 |")
    print(f"| only 7s and 8s: test error, before -> after bias {d['only78_bias_offset']:g} "
          f"| {100 * d['only78_error_before']:.1f}% -> {100 * d['only78_error_after']:.1f}% | 47.3% -> 13.2% (-7.6) |")
    e = d["ensemble"]
    print(f"| ensemble of {e['members']} 784-800-800 teachers / one of them (mean) / a student distilled "
          f"from the ensemble | {e['ensemble_errors']} / {e['single_teacher_errors_mean']:.0f} / "
          f"{e['distilled_errors']} | |")
    if "jittered_transfer" in d:
        j = d["jittered_transfer"]
        print(f"| transfer set jittered by up to 2 px (teachers online): student from the teacher / from the "
              f"ensemble | {j['from_teacher_errors']} / {j['from_ensemble_errors']} | |")
    sp = d["specialists"]
    print(f"| {sp['generalist']} generalist -> + specialists for {sp['groups']}, accuracy "
          f"| {100 * sp['generalist_accuracy']:.2f}% -> {100 * sp['with_specialists_accuracy']:.2f}% | |")
    print("\nTemperature sweep, test errors (students distilled from the same teacher, same epochs):\n")
    sweep = d["temperature_sweep"]
    columns = sorted({k for row in sweep.values() for k in row if k != "alone"}, key=lambda k: float(k[2:]))
    print("| student | alone | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 2) + "|")
    for spec, row in sweep.items():
        print(f"| {spec} | {row['alone']} | " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    print("\nLMA vs ReLU students, both distilled (T=4, alpha 0.7), test accuracy:\n")
    print("| student | ReLU | LMA (8 segments) | parameters (ReLU / LMA) |")
    print("|---|---|---|---|")
    rows = d["lma_students"]
    for spec in dict.fromkeys(k.rsplit("-", 1)[0] for k in rows):  # in the benchmark's order
        relu, lma = rows[f"{spec}-relu"], rows[f"{spec}-lma"]
        print(f"| {spec} | {100 * relu['accuracy']:.2f}% | {100 * lma['accuracy']:.2f}% "
              f"| {relu['parameters']:,} / {lma['parameters']:,} |")
    s = d["epoch_seconds"]
    print(f"\nOne epoch of the 784-800-800 student, median of 3 interleaved: distillation from cached soft "
          f"targets {d['cached_epoch_ratio']:.2f}x a plain epoch, with the teacher run online "
          f"{d['uncached_epoch_ratio']:.2f}x (the one teacher pass that fills the cache: "
          f"{s['teacher_pass_for_cache'] / s['plain']:.2f}x a plain epoch).")


def soft_weight_sharing() -> None:
    sws = json.loads((RESULTS / "soft_weight_sharing.json").read_text())
    paper = {"lenet-300-100": ("1.89% -> 1.94%", "4.3%", "64x"), "lenet-5": ("0.88% -> 0.97%", "0.5%", "162x")}
    print("| model (full MNIST) | method | error before -> after | non-zero | values | file | ratio | time |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("lenet-300-100", "lenet-5"):
        if name not in sws:
            continue
        r, dc = sws[name], sws[name]["deep_compression"]
        before = f"{100 * (1 - r['accuracy_before']):.2f}%"
        print(f"| {name} | soft weight-sharing, tau {r['tau']:g} | {before} -> {100 * (1 - r['accuracy_after']):.2f}% "
              f"| {100 * r['nonzero_fraction']:.1f}% | {r['distinct_values']} | {r['file_bytes']:,} B "
              f"| **{r['compression_ratio']:.1f}x** | {r['train_seconds'] / 60:.0f} min |")
        if "paper_procedure" in r:
            pp = r["paper_procedure"]
            print(f"| {name} | the same run, stopped where the paper stops | {before} -> "
                  f"{100 * (1 - pp['accuracy_after']):.2f}% | {100 * r['nonzero_fraction']:.1f}% | | "
                  f"| {pp['compression_ratio']:.1f}x | |")
        print(f"| {name} | deep compression, same network | {before} -> {100 * (1 - dc['accuracy_after']):.2f}% "
              f"| {100 * dc['nonzero_fraction']:.1f}% | | | {dc['compression_ratio']:.1f}x "
              f"| {dc['seconds'] / 60:.0f} min |")
        print(f"| {name} | paper (Ullrich et al.) | {paper[name][0]} | {paper[name][1]} | | | {paper[name][2]} | |")
    for name in ("lenet-300-100", "lenet-5"):
        if name in sws:
            r = sws[name]
            print(f"\n{name}, soft weight-sharing, per layer (retrained: {100 * r['accuracy_retrained']:.2f}%; "
                  f"{len(r['components']['means'])} shared values):\n")
            layer_table(r["layers"])


def structured() -> None:
    r = json.loads((RESULTS / "structured.json").read_text())
    s = r["slimming"]
    print("| vgg-bn, full MNIST | channels | accuracy | params | MFLOPs | .mzip file | CPU latency b1 / b64 |")
    print("|---|---|---|---|---|---|---|")
    print(f"| trained with the L1 penalty on the scales | {sum(b for b, _ in s['channels'].values())} "
          f"| {100 * s['accuracy_before']:.2f}% | {s['params_before']:,} | {s['flops_before'] / 1e6:.2f} "
          f"| {s['file_bytes_before']:,} B | 1 / 1 |")
    print(f"| slimmed ({100 * s['channels_removed_fraction']:.1f}% of channels removed), fine-tuned "
          f"| {sum(a for _, a in s['channels'].values())} | {100 * s['accuracy_after']:.2f}% | {s['params_after']:,} "
          f"| {s['flops_after'] / 1e6:.2f} | {s['file_bytes_after']:,} B "
          f"| {1 / s['latency_ratio_b1']:.2f} / {1 / s['latency_ratio_b64']:.2f} |")
    print(f"| ratio (before / after) | | {100 * (s['accuracy_after'] - s['accuracy_before']):+.2f} points "
          f"| {s['params_before'] / s['params_after']:.2f}x | {s['flops_before'] / s['flops_after']:.2f}x "
          f"| **{s['file_ratio']:.2f}x** | **{s['latency_ratio_b1']:.2f}x / {s['latency_ratio_b64']:.2f}x** |")
    print("\nChannels kept per layer: " + ", ".join(f"{k} {b} -> {a}" for k, (b, a) in s["channels"].items()))
    m = r["mlp_slimming"]
    print("\n| MLP 784-500-300-10 with batch norm, neuron-level slimming | params removed | error before -> after "
          "| widths kept (inputs-hidden-hidden) |")
    print("|---|---|---|---|")
    widths = "-".join(str(a) for _, a in m["widths"].values())
    print(f"| modelzip | {100 * m['params_removed_fraction']:.1f}% | {100 * m['error_before']:.2f}% -> "
          f"{100 * m['error_after']:.2f}% | {widths} |")
    print("| paper (Liu et al. 2017) | 84.4% | 1.43% -> 1.49% | 434-174-78 |")
    print("\n| low-rank, full MNIST | params | kept ratio per large layer | ranks | accuracy factorized -> fine-tuned "
          "| CPU latency ratio b1 / b64 |")
    print("|---|---|---|---|---|---|")
    for name, entry in r["lowrank"].items():
        print(f"| {name} dense | {entry['params']:,} | | | {100 * entry['accuracy_dense']:.2f}% | 1 / 1 |")
        for factor in ("2x", "4x", "8x"):
            f = entry[factor]
            ranks = ", ".join(f"{k} {'/'.join(map(str, v))}" for k, v in f["ranks"].items())
            latency = (f"{f['latency_ratio_b1']:.2f}x / {f['latency_ratio_b64']:.2f}x"
                       if "latency_ratio_b1" in f else "")
            print(f"| {name} {factor} fewer ({f['params_ratio']:.2f}x) | {f['params']:,} | {f['ratio']:.3f} | {ranks} "
                  f"| {100 * f['accuracy_factorized']:.2f}% -> **{100 * f['accuracy']:.2f}%** | {latency} |")
    o = r["obd_vs_magnitude"]
    print(f"\n| LeNet-300-100 (dense {100 * o['accuracy_dense']:.2f}%), pruned once, no retraining | "
          + " | ".join(f"{100 * x:g}%" for x in o["sparsity"]) + " |")
    print("|---|" + "---|" * len(o["sparsity"]))
    for key, label in (("magnitude_layer", "magnitude, per layer"), ("obd_fisher_layer", "OBD (Fisher), per layer"),
                       ("obd_hutchinson_layer", "OBD (Hutchinson), per layer"),
                       ("magnitude_global", "magnitude, global"), ("obd_fisher_global", "OBD (Fisher), global"),
                       ("obd_hutchinson_global", "OBD (Hutchinson), global")):
        print(f"| {label} | " + " | ".join(f"{100 * x:.2f}%" for x in o[key]) + " |")
    print("\n| LeNet-300-100, same kept weights | uniform sparsity: pruned / +1 epoch | allocated sparsities "
          "| allocated: pruned / +1 epoch |")
    print("|---|---|---|---|")
    for b in r["sensitivity_vs_uniform"]["budgets"]:
        alloc = ", ".join(f"{k} {v:g}" for k, v in b["allocated"].items())
        print(f"| {b['kept_weights']:,.0f} ({100 * (1 - b['uniform_sparsity']):g}%) | {b['uniform_sparsity']:g}: "
              f"{100 * b['accuracy_uniform']:.2f}% / {100 * b['accuracy_uniform_retrained']:.2f}% | {alloc} "
              f"| **{100 * b['accuracy_allocated']:.2f}% / {100 * b['accuracy_allocated_retrained']:.2f}%** |")


def quantization() -> None:
    r = json.loads((RESULTS / "quantization.json").read_text())
    first = r["int8"]
    print(f"| LeNet-5, full MNIST (float {100 * first['accuracy_before']:.2f}%) | .mzip file | ratio | accuracy "
          "(decoded file) | accuracy, int8 execution | CPU latency ratio b1 / b64 |")
    print("|---|---|---|---|---|---|")
    print(f"| float32 | {first['float_file_bytes']:,} B | 1x | {100 * first['accuracy_before']:.2f}% | | 1 / 1 |")
    for key, label in (("int8", "int8, post-training"), ("int4", "int4, post-training"),
                       ("qat_int4", "int4, quantization-aware training"), ("binary", "binary (1 bit), trained")):
        q = r[key]
        print(f"| {label} | {q['file_bytes']:,} B | **{q['file_ratio']:.2f}x** | {100 * q['accuracy_after']:.2f}% "
              f"| {100 * q['accuracy_int8_execution']:.2f}% | **{q['latency_ratio_b1']:.2f}x / "
              f"{q['latency_ratio_b64']:.2f}x** |")
    d = r["data_free_int8"]
    print(f"\n| VGG-BN in int8 (float {100 * d['accuracy_float']:.2f}%), activations calibrated on "
          "| accuracy |\n|---|---|")
    for key, label in (("accuracy_real_calibration", f"{d['calibration_images']} real training images"),
                       ("accuracy_data_free", f"{d['calibration_images']} images synthesized from batch-norm "
                                              "statistics (no data)"),
                       ("accuracy_noise_calibration", f"{d['calibration_images']} N(0, 1) noise images")):
        print(f"| {label} | {100 * d[key]:.2f}% |")
    q = r["data_free_qat"]
    print(f"\n| VGG-BN, {q['bits']}-bit weights (float {100 * q['accuracy_float']:.2f}%) | accuracy |\n|---|---|")
    print(f"| post-training, no data | {100 * q['accuracy_post_training']:.2f}% |")
    print(f"| QAT distilled from the float network on {q['images']:,} synthesized images (no data) "
          f"| **{100 * q['accuracy_distilled_data_free']:.2f}%** |")
    print(f"| QAT distilled on {q['images']:,} real training images (no labels) "
          f"| {100 * q['accuracy_distilled_real_images']:.2f}% |")
    n = r["quant_noise"]
    print("\n| LeNet-5, conv2 and fc1 by iPQ | bits a weight | Quant-Noise p = 0.1: trained -> final "
          "| plain iPQ QAT (p = 1): trained -> final | .mzip file |\n|---|---|---|---|---|")
    for e in (n, n["extreme"]):
        bits = (e["centroids"] - 1).bit_length() / e["block_size"]  # one code of log2(k) bits per block
        print(f"| blocks of {e['block_size']}, {e['centroids']} codewords | {bits:.1f} "
              f"| {100 * e['accuracy_quant_noise_before_final_stage']:.2f}% -> "
              f"**{100 * e['accuracy_quant_noise']:.2f}%** | {100 * e['accuracy_plain_qat_before_final_stage']:.2f}% "
              f"-> **{100 * e['accuracy_plain_qat']:.2f}%** "
              f"| {e['file_bytes_quant_noise']:,} / {e['file_bytes_plain_qat']:,} B |")
    m = r["mixed_precision"]
    print("\n| LeNet-5 post-training, bits a weight on average | one width for all | per-layer widths from "
          "sensitivity |\n|---|---|---|")
    for budget in ("2.5", "3"):
        e = m[f"{budget}_bits"]
        bits = ", ".join(f"{k} {v:g}" for k, v in e["bits"].items())
        print(f"| {budget} | {e['uniform_bits']} bits: {100 * e['accuracy_uniform']:.2f}% | {bits}: "
              f"**{100 * e['accuracy_mixed']:.2f}%** |")
    h = r.get("hashing")
    if h:
        print(f"\n| LeNet-300-100 hashed (dense {100 * h['accuracy_dense']:.2f}%, {h['file_bytes_dense']:,} B) "
              "| params | accuracy: least-squares fit -> trained | .mzip file | ratio |\n|---|---|---|---|---|")
        for key in (k for k in h if " 1/" in k):
            e = h[key]
            structure, fraction = key.split()
            label = "HashedNets buckets" if structure == "buckets" else "product of two matrices (SMH)"
            print(f"| {label}, {fraction} of the weights | {e['params']:,} | {100 * e['accuracy_hashed']:.2f}% -> "
                  f"**{100 * e['accuracy_trained']:.2f}%** | {e['file_bytes']:,} B | {e['file_ratio']:.1f}x |")
    o = r["onnx_qdq"]
    print("\n| ONNX export of LeNet-5, ONNX Runtime on the 10,000 test images | file | argmax agreement with PyTorch "
          "| accuracy | ORT latency ratio b1 / b64 |\n|---|---|---|---|---|")
    print(f"| float | {o['float_bytes']:,} B | {100 * r['onnx_argmax_agreement']:.2f}% "
          f"| {100 * o['accuracy_pytorch']:.2f}% | 1 / 1 (itself {o['ort_over_pytorch_b1']:.2f}x / "
          f"{o['ort_over_pytorch_b64']:.2f}x faster than PyTorch) |")
    print(f"| QDQ int8 | {o['qdq_bytes']:,} B | {100 * o['argmax_agreement']:.2f}% | {100 * o['accuracy_qdq']:.2f}% "
          f"| **{o['latency_ratio_b1']:.2f}x / {o['latency_ratio_b64']:.2f}x** |")

def real_models() -> None:
    results = json.loads((RESULTS / "real_models.json").read_text())
    for name, entry in results.items():
        if name == "preprocessing":
            continue
        keys = list(entry["runs"][0]["fidelity"])
        print(f"{name}: {entry['params']:,} parameters, {entry['fp32_bytes']:,} fp32 bytes; {entry['inputs']}\n")
        print(f"| method | file | ratio | {' | '.join(k.replace('_', ' ') for k in keys)} | CPU latency vs fp32 |")
        print("|---|---|---|" + "---|" * len(keys) + "---|")
        for run in entry["runs"]:
            bold = "**" if run["method"].startswith("modelzip-obs") else ""
            values = " | ".join(f"{run['fidelity'][k]:.4f}" for k in keys)
            print(f"| {bold}{run['method']}{bold} | {run['file_bytes']:,} B | {run['ratio']:.2f}x | {values} "
                  f"| {run['latency_ratio']:.2f}x |")
        print()
    own = results.get("preprocessing")
    if own:
        print(f"An MNIST CNN with its own (x - 0.1307) / 0.3081 in its forward, through `modelzip compress --model "
              f"pkg.mod:fn --pretrained --recipe int8`: its own accuracy {100 * own['own_accuracy']:.2f}%, the "
              f"report's accuracy before {100 * own['accuracy_before']:.2f}%, after {100 * own['accuracy_after']:.2f}% "
              f"({own['compression_ratio']:.2f}x).")


def scale() -> None:
    r = json.loads((RESULTS / "scale.json").read_text())
    print("| MLP weights | .mzip | prune | 5-bit k-means | save / torch.save | load / torch.load "
          "| save peak extra RSS / fp32 |")
    print("|---|---|---|---|---|---|---|")
    for e in r["sizes"]:
        print(f"| {e['params'] / 1e6:.2f}M | {e['file_bytes']:,} B | {e['prune_s']:.2f} s | {e['kmeans_s']:.2f} s "
              f"| {e['save_s']:.3f} s / {e['torch_save_s']:.3f} s (**{e['save_s'] / e['torch_save_s']:.1f}x**) "
              f"| {e['load_s']:.3f} s / {e['torch_load_s']:.3f} s (**{e['load_s'] / e['torch_load_s']:.1f}x**) "
              f"| {e['save_extra_rss_bytes'] / e['fp32_bytes']:.2f}x |")
    g = r["growth_exponents"]
    print("\nGrowth exponents, 2.5M to 40M (1.0 = linear): " + ", ".join(f"{k} {v:.2f}" for k, v in g.items()) + ".")
    k = r["kmeans_10m"]
    print(f"\nk-means on one 10M-weight layer, 32 centroids: {k['seconds']:.2f} s, within-cluster error "
          f"{k['sse_over_optimum']:.7f}x the exact optimum (kmeans1d's dynamic program: {k['optimum_seconds']:.0f} s).")
    sp = r["sparse"]
    print(f"\nSparse execution (`load(..., sparse=True)`), whole-model speedup over dense, one thread: 10M MLP at 92% "
          f"{sp['mlp10m_p92_b1']:.1f}x (batch 1) / {sp['mlp10m_p92_b64']:.1f}x (batch 64), at 97% "
          f"{sp['mlp10m_p97_b1']:.1f}x / {sp['mlp10m_p97_b64']:.1f}x; LeNet-300-100 {sp['lenet_b1']:.2f}x / "
          f"{sp['lenet_b64']:.2f}x; outputs within {sp['max_rel_diff']:.0e} of dense.")
    d = r["ddp"]
    print(f"\nTwo processes (`torchrun --nproc_per_node 2`, gloo): accuracy {100 * d['accuracy_2']:.2f}% vs "
          f"{100 * d['accuracy_1']:.2f}% in one, wall time {d['wall_ratio']:.2f}x.")


if __name__ == "__main__":
    main()
