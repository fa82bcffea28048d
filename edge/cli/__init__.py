"""`edge-face`: the command line of the device: the daemon, enrolment, evaluation, calibration, detection."""

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

    return FacePipeline.from_settings(settings.pipeline)


def cmd_detect(args: argparse.Namespace, settings: Settings) -> int:
    """Print Rekognition FaceDetails for every face in an image."""
    from edge.rekognition.shapes import face_detail

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

    if args.role:
        settings = settings.model_copy(update={"role": args.role})
    return serve(settings, state_dir=args.state_dir, host=args.host, port=args.port)


def cmd_enroll(args: argparse.Namespace, settings: Settings) -> int:
    """Enrol a folder of photos, resumably, and list every photo not enrolled with its reason."""
    from rich.console import Console

    from edge.cli.enroll import DaemonTarget, Journal, Refused, StateDirTarget, Target, default_journal, enroll, summary

    root = Path(args.directory)
    if not root.is_dir():
        raise SystemExit(f"{root} is not a folder")
    target: Target
    if args.endpoint_url:
        target = DaemonTarget(args.endpoint_url, profile=args.profile, region=args.region, ca_bundle=args.ca_bundle)
    else:
        if args.state_dir:
            settings = settings.model_copy(update={"state_dir": Path(args.state_dir)})
        target = StateDirTarget(settings)
    journal = Journal(Path(args.journal) if args.journal else default_journal(target.name, args.collection_id, root))
    console = Console()
    try:
        enroll(target, args.collection_id, root, journal, create=args.create_collection, console=Console(stderr=True))
    except KeyboardInterrupt:
        summary(journal, console)
        console.print("interrupted: run the same command again to carry on where it stopped")
        return 130
    except Refused as exc:
        summary(journal, console)
        console.print(f"stopped: {exc}")
        return 1
    finally:
        journal.close()
        target.close()
    summary(journal, console)
    return 0


def cmd_log(args: argparse.Namespace, settings: Settings) -> int:
    """The access log's search decisions, as a table or JSON lines."""
    from dataclasses import asdict
    from datetime import datetime

    from rich.console import Console
    from rich.table import Table

    from edge.store.access_log import LOG_FILE, AccessLog

    def moment(text: str | None) -> float | None:
        return None if text is None else datetime.fromisoformat(text).timestamp()  # naive: local time

    path = Path(args.state_dir or settings.state_dir) / LOG_FILE
    if not path.exists():
        raise SystemExit(f"no access log at {path}")
    log = AccessLog(path, readonly=True)
    try:
        decisions = log.query(since=moment(args.since), until=moment(args.until), collection_id=args.collection_id,
                              user_id=args.user_id)
    finally:
        log.close()
    if args.json:
        for d in decisions:
            print(json.dumps({**asdict(d), "time": datetime.fromtimestamp(d.at).astimezone().isoformat()}))
        return 0
    table = Table("time", "operation", "key", "collection", "matched", "Similarity", "threshold")
    for d in decisions:
        matched = " / ".join(v for v in (d.user_id, d.external_image_id) if v) or d.face_id or "nobody"
        table.add_row(datetime.fromtimestamp(d.at).strftime("%Y-%m-%d %H:%M:%S"), d.operation,
                      d.key_id or "unsigned", d.collection_id, matched,
                      "" if d.similarity is None else f"{d.similarity:.1f}", f"{d.threshold:g}")
    Console().print(table)
    return 0


def device_status(state_dir: Path, ca_bundle: Path | None = None) -> dict[str, Any]:
    """What `edge-face status` reports, as data: the daemon, its models, the store and its collections."""
    import shutil
    import ssl
    import urllib.request

    from edge.server import status
    from edge.store import inspect

    running = inspect.in_use(state_dir)
    published = status.read(state_dir) if running else None
    daemon: dict[str, Any] = {"running": running}
    if published is not None:
        daemon.update(pid=published["pid"], started_at=published["started_at"], endpoint=published["endpoint"])
        try:
            context = ssl.create_default_context(cafile=str(ca_bundle)) if ca_bundle else None
            with urllib.request.urlopen(published["endpoint"] + "/readyz", timeout=5, context=context) as reply:
                daemon["ready"] = json.loads(reply.read()).get("status") == "ready"
        except (OSError, ValueError):
            daemon["ready"] = False
    collections = inspect.collections(state_dir)
    free = shutil.disk_usage(state_dir).free if state_dir.exists() else None
    return {
        "state_dir": str(state_dir),
        "daemon": daemon,
        "pipeline": published["pipeline"] if published else None,
        "index_recovery": published["recovery"] if published else None,
        "store": {"collections": len(collections), "faces": sum(c.faces for c in collections),
                  "users": sum(c.users for c in collections),
                  "disk_bytes": inspect.disk_use(state_dir) if state_dir.exists() else 0, "free_bytes": free},
        "collections": [{"collection_id": c.collection_id, "faces": c.faces, "users": c.users,
                         "face_model_version": c.face_model_version, "synced_from": c.synced_from,
                         "lag_changes": c.lag_changes, "last_sync_at": c.last_sync_at,
                         "valid_until": c.valid_until} for c in collections],
    }


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """The device at a glance: daemon, models, store, collections; --json for scripts."""
    import time
    from datetime import datetime

    from rich.console import Console
    from rich.table import Table

    report = device_status(Path(args.state_dir or settings.state_dir), settings.server.tls_cert)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    console = Console()
    daemon, store, pipeline = report["daemon"], report["store"], report["pipeline"]
    if not daemon["running"]:
        console.print("daemon     not running")
    elif "pid" in daemon:
        since = datetime.fromtimestamp(daemon["started_at"]).astimezone().isoformat(timespec="seconds")
        console.print(f"daemon     running (pid {daemon['pid']}, since {since}) at {daemon['endpoint']}, "
                      + ("ready" if daemon["ready"] else "NOT READY"))
    else:
        console.print("daemon     running, still starting (models loading or store recovering)")
    if pipeline:
        console.print(f"models     {pipeline['embedder']} (FaceModelVersion {pipeline['face_model_version']}), "
                      f"{pipeline['precision']} on {pipeline['backend']}, flip {pipeline['flip_augment']}, "
                      f"detector {pipeline['detector']}")
    free = "" if store["free_bytes"] is None else f", {store['free_bytes'] / 1e9:.1f} GB free"
    console.print(f"store      {report['state_dir']}: {store['collections']} collections, {store['faces']} faces, "
                  f"{store['users']} users; {store['disk_bytes'] / 1e6:.1f} MB on disk{free}")
    if report["collections"]:
        table = Table("collection", "faces", "users", "FaceModelVersion", "synced from", "last sync", "lag")
        for c in report["collections"]:
            synced = c["synced_from"] is not None
            last = datetime.fromtimestamp(c["last_sync_at"]).strftime("%Y-%m-%d %H:%M:%S") if synced else ""
            lag = f"{c['lag_changes']} changes, {time.time() - c['last_sync_at']:.0f} s" if synced else ""
            table.add_row(c["collection_id"], str(c["faces"]), str(c["users"]), c["face_model_version"],
                          c["synced_from"] or "local", last, lag)
        console.print(table)
    return 0 if not daemon["running"] or daemon.get("ready", False) else 1


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    """Create, list, revoke and rotate access keys; a running daemon follows at its next request."""
    from datetime import datetime

    from rich.console import Console
    from rich.table import Table

    from edge.server.credentials import SCOPES, AccessKey, KeyStore, key_from_spec
    from edge.store import StoreError

    keys = KeyStore(Path(args.state_dir or settings.state_dir))
    console = Console()

    def show_secret(key: AccessKey) -> None:
        print(f"access key {key.access_key_id} ({key.name}); its secret is shown this once, as an AWS "
              f"credentials-file profile:\n\n[{key.name}]\naws_access_key_id = {key.access_key_id}\n"
              f"aws_secret_access_key = {key.secret_access_key}")

    try:
        if args.action == "create":
            operations = args.operations.split(",") if args.operations else SCOPES[args.scope]
            show_secret(keys.create(args.name, operations, args.collection or None))
        elif args.action == "rotate":
            show_secret(keys.rotate(args.key, keep_old=args.keep_old))
        elif args.action == "import":
            document = json.loads(sys.stdin.read())
            if not isinstance(document, list):
                raise ValueError("expected a JSON list of keys on stdin")
            changes = keys.put([key_from_spec(spec) for spec in document], revoke_others=args.exclusive)
            for change, key in changes:
                print(f"{change} {key.name} {key.access_key_id}")
            if not changes:
                print("unchanged")
        elif args.action == "revoke":
            revoked = keys.revoke(args.key)
            console.print(f"revoked {revoked.access_key_id} ({revoked.name}): refused from the next request on")
        else:
            shown = [k for k in keys.all() if args.all or k.revoked_at is None]
            if args.json:
                for k in shown:
                    print(json.dumps({"name": k.name, "access_key_id": k.access_key_id, "scope": k.scope,
                                      "operations": None if k.operations is None else sorted(k.operations),
                                      "collections": None if k.collections is None else sorted(k.collections),
                                      "created_at": k.created_at, "revoked_at": k.revoked_at}))
                return 0
            table = Table("name", "access key", "scope", "collections", "created", "revoked")
            for k in shown:
                table.add_row(k.name, k.access_key_id, k.scope if k.scope != "custom" else ",".join(
                    sorted(k.operations or ())), "all" if k.collections is None else ", ".join(sorted(k.collections)),
                    datetime.fromtimestamp(k.created_at).strftime("%Y-%m-%d %H:%M"),
                    datetime.fromtimestamp(k.revoked_at).strftime("%Y-%m-%d %H:%M") if k.revoked_at else "")
            console.print(table)
    except (KeyError, ValueError, StoreError) as exc:
        raise SystemExit(f"edge-face keys {args.action}: {exc.args[0]}") from None
    return 0


def _at(settings: Settings, state_dir: str | None) -> Settings:
    return settings.model_copy(update={"state_dir": Path(state_dir)}) if state_dir else settings


def cmd_state(args: argparse.Namespace, settings: Settings) -> int:
    """Which builds may open the state directory; the snapshot a fleet's rollback takes and restores."""
    from edge.cli.state import assess, show
    from edge.store import StoreError
    from edge.store.state import restore_snapshot, take_snapshot

    state_dir = Path(args.state_dir or settings.state_dir)
    try:
        if args.action == "snapshot":
            take_snapshot(state_dir, Path(args.snapshot))
            print(f"snapshot of {state_dir} in {args.snapshot}: it holds every face, delete it once it is not needed")
            return 0
        if args.action == "restore":
            restore_snapshot(state_dir, Path(args.snapshot))
            print(f"restored {state_dir} from {args.snapshot}")
            return 0
    except StoreError as exc:
        raise SystemExit(f"edge-face state {args.action}: {exc}") from None
    report = assess(state_dir, args.previous)
    print(json.dumps(report, indent=2) if args.json else show(report))
    return 1 if report["refuse"] else 0


def cmd_central(args: argparse.Namespace, settings: Settings) -> int:
    """The central's fleet administration: device keys and the feed's online signing key."""
    import yaml

    from edge.files import write_private
    from edge.server.devices import DeviceRegistry
    from edge.server.fleet import central_keys_dir, devices_file, feed_storage
    from edge.sync.publisher import ensure_root, rotate_online_key

    settings = _at(settings, args.state_dir)
    settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    registry = DeviceRegistry(devices_file(settings))
    if args.action == "list-devices":
        for device in registry.devices():
            print(f"{device.name}\t{device.access_key_id}\t{','.join(device.collections)}")
        return 0
    if args.action == "revoke-device":
        if not registry.revoke(args.name):
            print(f"no device named {args.name!r}", file=sys.stderr)
            return 1
        print(f"revoked {args.name}: its key is refused from now on; the other devices are untouched")
        return 0
    storage = feed_storage(settings)
    try:
        if args.action == "rotate-key":
            try:
                version = rotate_online_key(storage, central_keys_dir(settings))
            except FileNotFoundError as exc:
                print(exc, file=sys.stderr)
                return 1
            print(f"new online key; root version {version} names it. Running centrals re-sign every feed with it "
                  "and devices move to it on their next sync.")
            return 0
        ensure_root(storage, central_keys_dir(settings))
        root = storage.root(None)
        assert root is not None
        device = registry.add(args.name, [c for c in args.collections.split(",") if c])
        out = Path(args.out)
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(out / "root.json", root)
        config = {"sync": {"central_url": args.url, "access_key_id": device.access_key_id,
                           "secret_access_key": device.secret_access_key, "collections": device.collections,
                           "root": str((out / "root.json").resolve())}}
        write_private(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        print(f"device {device.name} may read {', '.join(device.collections)}. Copy {out}/ to it (it holds the "
              f"device's secret key) and start it with\n  EDGE_FACE_CONFIG={out.resolve()}/config.yaml "
              "edge-face serve")
        return 0
    finally:
        storage.close()


def cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    """Ask the running daemon to sync now; prints each followed collection's state."""
    import urllib3

    from edge.server.credentials import KeyStore
    from edge.server.status import local_url
    from edge.sync.client import SignedFetcher

    settings = _at(settings, args.state_dir)
    admin = next(k for k in KeyStore(settings.state_dir).all() if k.scope == "admin" and k.revoked_at is None)
    server = settings.server
    url = args.url or local_url(server)
    signer = SignedFetcher(admin.access_key_id, admin.secret_access_key, timeout_s=600, ca_bundle=server.tls_cert)
    pool = urllib3.PoolManager(ca_certs=str(server.tls_cert) if server.tls_cert else None, retries=False)
    response = pool.request("POST", url + "/sync", headers=signer.signed_headers("POST", url + "/sync"),
                            timeout=600)
    body = json.loads(response.data or b"{}")
    print(json.dumps(body, indent=2))
    failed = response.status != 200 or any(status.get("error") for status in body.values())
    return 1 if failed else 0


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
    p.add_argument("--role", choices=["device", "central"],
                   help="central: also publish every collection's signed feed to devices (default: device)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "enroll", help="enrol a folder of photos into a collection (resumable)",
        description="Enrol every photo of DIRECTORY into a collection. A photo directly in DIRECTORY is one face "
        "(its ExternalImageId is the file name); a sub-folder is one person (its name is the UserId) and each of "
        "its photos a face of that user. Through a running daemon with --endpoint-url, signed with an aws profile; "
        "or straight into the state directory when no daemon runs. Ctrl-C or a crash loses nothing: run the same "
        "command again and it carries on; no photo is enrolled twice. At the end, every photo not enrolled is "
        "listed with its reason (no face, several faces, low quality, unreadable).")
    p.add_argument("directory", help="the folder of photos (.jpg, .jpeg, .png)")
    p.add_argument("--collection-id", required=True)
    p.add_argument("--create-collection", action="store_true", help="create the collection if it does not exist")
    p.add_argument("--endpoint-url", help="a running daemon, e.g. http://127.0.0.1:8080 (default: no daemon, "
                   "write to the state directory)")
    p.add_argument("--profile", help="the aws profile to sign with (AWS_SHARED_CREDENTIALS_FILE names the file)")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--ca-bundle", help="the daemon's certificate, for https")
    p.add_argument("--state-dir", help="without --endpoint-url: the state directory (default: the daemon's)")
    p.add_argument("--journal", help="where progress is kept (default: under ~/.local/state/edge-face/enroll)")
    p.set_defaults(func=cmd_enroll)

    p = sub.add_parser("log", help="who was let in: the search decisions of the access log",
                       description="Print the search decisions the device made (time, operation, access key, "
                       "collection, the person matched or nobody, Similarity, threshold), oldest first. Times are "
                       "ISO 8601 in local time, e.g. --since 2026-11-24T09:00 --until 2026-11-24T10:00.")
    p.add_argument("--since", help="from this time on (inclusive)")
    p.add_argument("--until", help="up to this time (exclusive)")
    p.add_argument("--collection-id", help="only this collection")
    p.add_argument("--user-id", help="only decisions that matched this user")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.add_argument("--state-dir", help="the daemon's state directory (default: the configured one)")
    p.set_defaults(func=cmd_log)

    p = sub.add_parser("status", help="the device at a glance: daemon, models, store, collections",
                       description="Whether the daemon runs and is ready, which models it runs on which backend and "
                       "precision, the collections with their face and user counts, disk use. Exits 1 when a "
                       "running daemon is not ready.")
    p.add_argument("--state-dir", help="the daemon's state directory (default: the configured one)")
    p.add_argument("--json", action="store_true", help="the same as JSON, for scripts")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("keys", help="access keys: create, list, revoke, rotate (no restart needed)",
                       description="Manage the daemon's access keys in its state directory. A key is scoped to "
                       "operations (a named --scope or an explicit --operations list) and optionally to "
                       "collections (--collection, repeatable). Its secret is shown once, when it is made; the "
                       "key file keeps it sealed. A running daemon takes every change at its next request.")
    p.add_argument("--state-dir", help="the daemon's state directory (default: the configured one)")
    actions = p.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new key; prints its secret once")
    create.add_argument("name", help="who holds it, e.g. kiosk-door-3")
    create.add_argument("--scope", choices=("admin", "read-only", "search"), default="search",
                        help="admin: everything; read-only: Search*, Detect*, Compare*, List*, Describe*; search "
                        "(default): SearchFaces*, SearchUsers*, DetectFaces, CompareFaces")
    create.add_argument("--operations", help="instead of --scope: a comma-separated list of operations")
    create.add_argument("--collection", action="append", help="the only collection it may use (repeatable)")
    listing = actions.add_parser("list", help="the keys, without their secrets")
    listing.add_argument("--all", action="store_true", help="revoked keys too")
    listing.add_argument("--json", action="store_true", help="JSON lines")
    revoke = actions.add_parser("revoke", help="refuse a key from the next request on")
    revoke.add_argument("key", help="its access key id or name")
    rotate = actions.add_parser("rotate", help="a new secret (and id) for a key, same name and scope")
    rotate.add_argument("key", help="its access key id or name")
    rotate.add_argument("--keep-old", action="store_true", help="leave the old key valid until revoked")
    importing = actions.add_parser(
        "import", help="make the keys given on stdin live as given, secrets included (a fleet's vault: ansible/)",
        description="stdin: a JSON list of {name, access_key_id, secret_access_key, scope | operations, "
                    "collections}. Prints what changed: added, updated, revoked (or unchanged).")
    importing.add_argument("--exclusive", action="store_true", help="revoke every live key not given")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("state", help="the state's formats: whether this build reads them; rollback snapshots",
                       description="check: each format of the state directory on disk and in this build, whether "
                       "this build reads it, and (--previous) whether the release before it will still read it "
                       "once this one has opened it; exits 1 when the upgrade must stop before changing anything. "
                       "snapshot / restore: the copy of the state a rollback puts back (restore only while the "
                       "daemon is stopped). ansible's rollout runs them (ansible/README.md).")
    p.add_argument("--state-dir", help="the daemon's state directory (default: the configured one)")
    actions = p.add_subparsers(dest="action", required=True)
    checking = actions.add_parser("check", help="which builds may open the state, and what a rollback needs")
    checking.add_argument("--previous", help="the previous release's own `state check --json` answer (empty: a "
                          "release from before format stamps)")
    checking.add_argument("--json", action="store_true", help="JSON, for ansible")
    for action, help_text in (("snapshot", "copy the state (consistently, while the daemon runs) into SNAPSHOT"),
                              ("restore", "put the state back from SNAPSHOT (the daemon stopped)")):
        actions.add_parser(action, help=help_text).add_argument("snapshot", metavar="SNAPSHOT")
    p.set_defaults(func=cmd_state)

    p = sub.add_parser("central", help="the central's device keys and feed signing key")
    p.add_argument("--state-dir", help="the central's state directory")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("add-device", help="a key for one device, scoped to collections; writes its config")
    a.add_argument("name")
    a.add_argument("--collections", required=True, help="comma-separated collection ids the device follows")
    a.add_argument("--url", required=True, help="the central's URL as the device reaches it")
    a.add_argument("--out", required=True, help="folder for the device's config.yaml and root.json")
    a = actions.add_parser("revoke-device", help="refuse one device's key from now on")
    a.add_argument("name")
    actions.add_parser("list-devices", help="every device key and its collections")
    actions.add_parser("rotate-key", help="replace the feed's online signing key (a new root names it)")
    p.set_defaults(func=cmd_central)

    p = sub.add_parser("sync", help="make the running device daemon sync its collections now")
    p.add_argument("--state-dir", help="the device's state directory (its admin key is read from it)")
    p.add_argument("--url", help="the daemon's URL (default: from the server settings)")
    p.set_defaults(func=cmd_sync)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    return int(args.func(args, Settings()))
