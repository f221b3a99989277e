"""The report folder of a training run (train-probe): what `write_report` writes, where the caller says."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from toolkit import fsio
from toolkit.evaluation.metrics import confusion_csv, per_class_csv, reliability_panels


def predictions_csv(paths, labels, classes, proba: np.ndarray, zs_proba) -> str:
    buf = io.StringIO()
    w = fsio.csv_writer(buf)
    w.writerow(["path", "label", "predicted", "score", "zeroshot_predicted", "zeroshot_score"])
    for i, (p, lb) in enumerate(zip(paths, labels)):
        j = int(proba[i].argmax())
        zs = ["", ""] if zs_proba is None else [classes[int(zs_proba[i].argmax())], f"{zs_proba[i].max():.6f}"]
        w.writerow([p, lb, classes[j], f"{proba[i, j]:.6f}", *zs])
    return buf.getvalue()


def write_report(result, folder: str | Path) -> Path:
    """Fill `folder` (created) from a fitting.probe.ProbeResult: report.json, confusion_matrix.csv/.png,
    zeroshot_confusion_matrix.csv/.png, per_class.csv, sweep.png (the chosen method's sweep),
    candidates.png (auto: every candidate's score), reliability.png (calibration before/after)
    and predictions.csv (one row per test image; scores calibrated). Returns the folder."""
    from toolkit.evaluation import plots

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    classes = result.head.classes_
    test, zs = result.metrics["test"], result.metrics.get("zeroshot_test")
    t = result.test
    fsio.write_text(out / "confusion_matrix.csv", confusion_csv(test["confusion_matrix"], classes))
    fsio.write_text(out / "per_class.csv", per_class_csv(test))
    fsio.write_text(out / "predictions.csv", predictions_csv(t["paths"], t["labels"], classes, t["proba"],
                                                             t.get("zeroshot_proba")))
    method = result.params.get("method", "probe")
    acc = f"{100 * test['accuracy']:.1f}%" if test["accuracy"] is not None else "n/a"
    plots.confusion_matrix_png(test["confusion_matrix"], classes, out / "confusion_matrix.png",
                               f"probe ({method}) on test: accuracy {acc}")
    if zs:
        fsio.write_text(out / "zeroshot_confusion_matrix.csv", confusion_csv(zs["confusion_matrix"], classes))
        zacc = f"{100 * zs['accuracy']:.1f}%" if zs["accuracy"] is not None else "n/a"
        plots.confusion_matrix_png(zs["confusion_matrix"], classes, out / "zeroshot_confusion_matrix.png",
                                   f"zero-shot on test: accuracy {zacc}")
    if result.sweep:
        param = result.sweep[0]["param"]
        plots.sweep_png(result.sweep, out / "sweep.png", f"{result.params.get('chosen', method)}: validation "
                        f"accuracy over {param}", chosen=result.params.get(param))
    selection = result.metrics.get("selection")
    if selection and selection.get("candidates"):  # auto: every candidate it compared, the chosen one marked
        ranked = sorted(selection["candidates"].items(), key=lambda kv: -kv[1]["val_accuracy"])
        how = "val" if selection["mode"] == "val" else f"{selection['mode']} over train + val"
        plots.comparison_bars_png([n + (" (chosen)" if n == selection["chosen"] else "") for n, _ in ranked],
                                  [c["val_accuracy"] for _, c in ranked],
                                  ["chosen" if n == selection["chosen"] else "candidate" for n, _ in ranked],
                                  out / "candidates.png", title=f"auto: the candidates compared ({how})")
    panels = reliability_panels({f"probe ({method})": (result.metrics.get("calibration") or {}).get("probe"),
                                 "zero-shot": (result.metrics.get("calibration") or {}).get("zeroshot")})
    if panels:
        plots.reliability_png(panels, out / "reliability.png", "calibration on test, before and after "
                              "temperature scaling (fitted on val)")
    doc = {"metrics": result.metrics, "params": result.params, "sweep": result.sweep, "config": result.config,
           "store": result.store_path, "timings": result.timings, "classes": classes,
           "identity": result.head.identity.to_dict() if result.head.identity is not None else None}
    fsio.write_text(out / "report.json", json.dumps(doc, indent=2, default=str))
    return out
