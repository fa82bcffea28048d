"""`edge-face`: the command line of the device (evaluation, calibration, detection)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import Settings


def _pipeline(settings: Settings) -> Any:
    from edge.vision.pipeline import FacePipeline

    return FacePipeline(settings.pipeline)


def cmd_detect(args: argparse.Namespace, settings: Settings) -> int:
    """Print Rekognition FaceDetails for every face in an image."""
    from edge.vision.pipeline import face_detail

    pipeline = _pipeline(settings)
    analysis = pipeline.analyse(Path(args.image).read_bytes(), embed=False)
    details = [face_detail(analysis.image, f, all_attributes=args.all) for f in analysis.faces]
    json.dump({"FaceDetails": details}, sys.stdout, indent=2)
    print()
    return 0


def _embed_all(settings: Settings, data: Path, families: Sequence[str] | None = None,
               precisions: Sequence[str] | None = None) -> tuple[Any, Any, Any]:
    from edge.evaluation.dataset import load_faceset
    from edge.evaluation.verify import embed_faceset
    from edge.vision.embedder import Embedder
    from edge.vision.models import ModelCatalog
    from edge.vision.runtime import default_threads, select_backend

    faceset = load_faceset(data)
    pipeline = _pipeline(settings)
    catalog = ModelCatalog(settings.pipeline.model_dir)
    threads = settings.pipeline.threads or default_threads()
    cpu = select_backend(["cpu"])
    embedders = {a.name: Embedder(catalog, a, backend=cpu, threads=threads) for a in catalog.artifacts
                 if a.kind == "embedder" and (not families or a.family in families)
                 and (not precisions or a.precision in precisions)}
    return faceset, embed_faceset(pipeline, embedders, faceset), {n: e.artifact for n, e in embedders.items()}


def cmd_calibrate(args: argparse.Namespace, settings: Settings) -> int:
    """Fit cosine -> Similarity on a face folder for both flip modes, for single faces and for users
    of 2-4 faces, each with the margin that person-disjoint cross-validation measures; `--check N`
    then measures the procedure on people it never saw (N partitions of CHECK_FOLDS folds), for
    faces and for users of 3 faces (the check takes minutes per partition)."""
    from edge.evaluation.calibrate import (
        CHECK_FOLDS,
        CHECKED_FACES,
        USER_FACES,
        ImpostorPairs,
        calibration_table,
        cross_validated_calibration,
        fit_cross_validated,
        fit_plain,
        fmr_report,
        out_of_fold_similarity,
    )

    faceset, emb, artifacts = _embed_all(settings, Path(args.data), [args.family], ["fp32"])
    (name,) = artifacts
    out: dict[str, Any] = {"fitted_on": {"data": Path(args.data).name, "model": name, "face": "labelled"},
                           "users": {}}
    for mode, suffix in (("single", ""), ("flip", "+flip")):
        vectors = emb.vectors["labelled"][name + suffix]
        out["users"][mode] = {}
        for n_faces in (1, *USER_FACES):
            pairs = (ImpostorPairs.from_vectors(vectors, faceset.labels) if n_faces == 1
                     else ImpostorPairs.users_from_vectors(vectors, faceset.labels, n_faces))
            calibration, report = cross_validated_calibration(pairs)
            what = "faces" if n_faces == 1 else f"users of {n_faces} faces"
            for sim, cos, fmr in calibration_table(calibration, (50, 60, 70, 80, 90)):
                print(f"{mode} {what}: Similarity {sim:g} at cosine {cos:.4f} (nominal FMR {fmr:.0e})")
            if n_faces == 1:
                out[mode] = calibration.to_dict()
                out["fitted_on"][mode] = {"impostor_pairs": len(pairs.cosines), "report": report}
            else:
                out["users"][mode][str(n_faces)] = calibration.to_dict()
                out["fitted_on"][mode][f"users of {n_faces}"] = {"comparisons": len(pairs.cosines), "report": report}
            if args.check and n_faces in CHECKED_FACES:
                report["check"] = {"folds": CHECK_FOLDS, "partitions": args.check}
                for procedure, fit in (("fitted_on_all", fit_plain), ("cross_validated", fit_cross_validated)):
                    similarities = [out_of_fold_similarity(pairs, fit, CHECK_FOLDS, 1000 + seed)
                                    for seed in range(args.check)]
                    report["check"][procedure] = fmr_report(pairs, similarities)
                    _print_check(f"{mode} {what}, {procedure}", report["check"][procedure])
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def _print_check(title: str, rows: dict[str, dict[str, Any]]) -> None:
    print(f"{title}: Similarity | nominal FMR | out-of-fold FMR (false matches per partition) "
          "| 95% person bootstrap | 95% Clopper-Pearson")
    for level, r in rows.items():
        print(f"  {level} | {r['nominal']:.0e} | {r['fmr']:.2e} ({r['false_matches']:g}/{r['pairs']}) | "
              + " | ".join(f"{lo:.1e}-{hi:.1e}" for lo, hi in (r["bootstrap"], r["clopper_pearson"])))


def cmd_identify(args: argparse.Namespace, settings: Settings) -> int:
    """1:N identification: faces (IndexFaces, SearchFacesByImage) beside the peer, and users of 1, 3 and 5
    photos (CreateUser, IndexFaces, AssociateFaces, SearchUsersByImage)."""
    from edge.evaluation.dataset import load_faceset
    from edge.evaluation.identify import (
        USER_PHOTOS,
        evaluate_identification,
        evaluate_peer_identification,
        evaluate_users,
    )

    faceset = load_faceset(args.data)
    results: dict[str, Any] = {"edge_face": evaluate_identification(settings, faceset)}
    results["edge_face_users"] = {f"{n}_photos": evaluate_users(settings, faceset, n) for n in USER_PHOTOS}
    if args.peer:
        from edge.evaluation.peer import cached_embeddings

        embeddings, _ = cached_embeddings(faceset, Path(args.peer_cache) if args.peer_cache else None)
        results["face_recognition"] = evaluate_peer_identification(faceset, embeddings)
    print(json.dumps(results, indent=2))
    columns = ("rank1", "identified_at_80", "wrong_person_at_80", "strangers_matched_at_80", "identified_at_75",
               "strangers_matched_at_75", "identified_at_70", "strangers_matched_at_70")
    print("| protocol | enrolled people | probes | " + " | ".join(c.replace("_", " ") for c in columns) + " |")
    print("|---" * (3 + len(columns)) + "|")
    rows = {"faces, 1 photo (SearchFacesByImage)": results["edge_face"]} | {
        f"users, {key.replace('_', ' ')} (SearchUsersByImage)": r for key, r in results["edge_face_users"].items()}
    for name, r in rows.items():
        cells = [f"{100 * r[c]:.1f}%" if r["enrolled_people"] else "-" for c in columns]
        print(f"| {name} | {r['enrolled_people']} | {r.get('probes', '-')} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    """Verification accuracy of every embedder artifact in both flip modes (and fusions), beside the peer."""
    from edge.evaluation.enrolment import compare_user_scores
    from edge.evaluation.verify import fuse, verification_report

    if args.identify:
        return cmd_identify(args, settings)

    faceset, emb, artifacts = _embed_all(settings, Path(args.data))
    results: dict[str, Any] = {"photos": len(faceset.paths), "stage_ms_median": {
        k: float(np.median(v)) for k, v in emb.stage_ms.items() if v}, "models": {}}
    for rule, by_name in emb.vectors.items():
        models = results["models"][rule] = {}
        for name, vectors in by_name.items():
            base, _, flip = name.partition("+")
            calibration = artifacts[base].similarity.get("flip" if flip else "single")
            models[name] = verification_report(vectors, faceset, calibration)
        dlib, facenet = by_name.get("dlib_resnet_v1-fp32+flip"), by_name.get("facenet_casia-fp32+flip")
        if dlib is not None and facenet is not None:
            for weight in args.fusion_weights:
                models[f"fusion(dlib*{weight:g}+facenet)+flip"] = verification_report(
                    fuse(dlib, facenet, weight), faceset)
    results["user_scores"] = {
        f"{name}, users of {n}": compare_user_scores(emb.vectors["labelled"][name], faceset.labels, n)
        for name in ("dlib_resnet_v1-fp32", "dlib_resnet_v1-fp32+flip") if name in emb.vectors["labelled"]
        for n in (2, 3)}
    if args.peer:
        from edge.evaluation.peer import evaluate_peer

        results["peer"] = evaluate_peer(faceset)
    _print_eval(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float) + "\n")
    return 0


def _print_eval(results: dict[str, Any]) -> None:
    print(f"photos: {results['photos']}; median ms per photo: "
          + ", ".join(f"{k} {v:.2f}" for k, v in results["stage_ms_median"].items()))
    print("| model | face | no face | 10-fold | TAR@FAR1e-3 (thr) | TAR@FAR1e-4 (thr) | TAR@FAR1e-5 "
          "| FMR@60 | FMR@70 | FMR@80 | TAR@80 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for rule, models in results["models"].items():
        for name, r in models.items():
            t3, t4 = r["tar_at_far"]["0.001"], r["tar_at_far"]["0.0001"]
            at = r.get("at_similarity", {})
            fmr = [f"{at[s]['fmr']:.1e}" if at else "-" for s in ("60", "70", "80")]
            tar80 = f"{100 * at['80']['tar']:.1f}%" if at else "-"
            print(f"| {name} | {rule} | {r['photos_without_face']} | {100 * r['ten_fold_accuracy']:.2f}% | "
                  f"{100 * t3['tar']:.1f}% ({t3['threshold']:.3f}) | {100 * t4['tar']:.1f}% ({t4['threshold']:.3f}) | "
                  f"{100 * r['tar_at_far']['1e-05']['tar']:.1f}% | " + " | ".join(fmr)
                  + f" | {tar80} |")
    print("| users scored by | model, user size | TAR@FMR1e-3 | TAR@FMR1e-4 | TAR@FMR1e-5 (photo vs user) |")
    print("|---|---|---|---|---|")
    for case, scores in results["user_scores"].items():
        for score, r in scores.items():
            print(f"| {score} | {case} | " + " | ".join(f"{100 * r[f]:.1f}%" for f in ("0.001", "0.0001", "1e-05"))
                  + " |")
    if "peer" in results:
        p = results["peer"]
        print(f"peer face_recognition: 10-fold euclid {100 * p['pairs']['euclidean']['ten_fold_accuracy']:.2f}%, "
              f"cosine {100 * p['pairs']['cosine']['ten_fold_accuracy']:.2f}%; TAR@1e-3 cosine "
              f"{100 * p['all_pairs']['cosine']['far=0.001']['tar']:.1f}%; timings {p['timings']}")


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Run the Rekognition-compatible daemon until SIGTERM or Ctrl-C."""
    from edge.server.app import serve

    return serve(settings, state_dir=args.state_dir, host=args.host, port=args.port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-face", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("detect", help="print FaceDetails for an image")
    p.add_argument("image")
    p.add_argument("--all", action="store_true", help="every landmark (Attributes ALL)")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("eval", help="verification accuracy on a folder laid out like faces-dev")
    p.add_argument("--data", required=True)
    p.add_argument("--peer", action="store_true", help="run face_recognition side by side")
    p.add_argument("--peer-cache", help="an .npz to keep face_recognition's embeddings in between runs")
    p.add_argument("--identify", action="store_true", help="1:N identification through the Rekognition operations")
    p.add_argument("--fusion-weights", type=lambda v: [float(w) for w in v.split(",")], default=[0.5, 0.7, 0.9],
                   help="dlib's weights in the score fusion with FaceNet, comma-separated")
    p.add_argument("--json", help="write the full results here")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("calibrate", help="fit the cosine -> Similarity map on a face folder")
    p.add_argument("--data", required=True)
    p.add_argument("--family", default="dlib_resnet_v1")
    p.add_argument("--out", required=True)
    p.add_argument("--check", type=int, default=0, metavar="N",
                   help="measure the procedure on people it never saw, over N partitions (minutes each)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("serve", help="run the daemon (Rekognition's API over HTTP, for the aws CLI and SDKs)")
    p.add_argument("--state-dir", help="collections and access keys (default: the user's data directory, "
                   "~/.local/share/edge-face)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8080)")
    p.set_defaults(func=cmd_serve)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    return int(args.func(args, Settings()))


if __name__ == "__main__":
    sys.exit(main())
