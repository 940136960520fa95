"""duo-admin: look at and change the Duo routing sidecar's configuration from a shell."""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from itertools import islice
from pathlib import Path
from typing import Any, Generic, TextIO, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from duo_admin.client import (
    DEFAULT_ADDRESS,
    DEFAULT_TIMEOUT_SECONDS,
    SECRET_ENV,
    SECRET_FILE_ENV,
    AdminClient,
    ClientSetupError,
    DuoAdminError,
    RoutingClient,
    load_secret,
    tls_credentials,
    validated_actor,
)
from duo_admin.output import (
    NONE,
    describe,
    enum_choices,
    enum_label,
    message_to_json,
    print_error,
    print_fields,
    print_json,
    print_table,
    timestamp_label,
)
from gitlab.duo.routing.v1 import admin_pb2, routing_pb2, types_pb2

ADDRESS_ENV = "DUO_ADMIN_ADDRESS"
EXIT_RPC_ERROR = 1
EXIT_USAGE = 2  # also argparse's
EXIT_TEST_FAILED = 3  # test-model: the sidecar ran the test and the model failed it
EXIT_BROKEN_PIPE = 141  # what a shell reports for a process killed by SIGPIPE
MAX_TIMEOUT_SECONDS = 86_400.0
# gRPC target forms other than HOST:PORT that --address passes through as they are.
GRPC_TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:")
# Lists are read whole; the largest page the server allows keeps round trips few.
LIST_PAGE_SIZE = 1000
DEFAULT_AUDIT_LIMIT = 50
DEFAULT_COMPLETE_TIMEOUT_SECONDS = 300.0  # completions stream for a while; other calls are quick
AGENTIC_CHAT = "duo_agent_platform_agentic_chat"  # user-models' default: today's user-selectable feature

FAMILIES = enum_choices(types_pb2.ModelFamily.DESCRIPTOR)
PLATFORMS = enum_choices(types_pb2.Platform.DESCRIPTOR)
FEATURE_PROVIDERS = enum_choices(admin_pb2.FeatureProvider.DESCRIPTOR)
SELF_HOSTED_FIELDS = ("name", "family", "platform", "endpoint", "identifier")

EPILOG = """\
output:
  Text by default: "key: value" lines and aligned tables, enum values by their short
  lower-case name (provider gitlab_ai_gateway, source context_namespace).
  --json (before or after the command) prints the response message as a JSON object
  (proto3 JSON mapping: proto field names, every field present, enum values by full
  name such as PROVIDER_GITLAB_AI_GATEWAY, ids as numbers). List commands print a
  JSON array of the items, across all pages.

exit status:
  0 success; 1 the sidecar refused the request or could not be reached (stderr shows
  "error: CODE: message" and one line per detail); 2 invalid command line, or a file
  or address given that cannot be used (stderr shows "duo-admin: error: ..."), nothing
  was sent; 3 test-model: the model failed the test (the output shows success: false
  and the endpoint's error).

environment:
  DUO_ADMIN_ADDRESS      default for --address
  DUO_ADMIN_SECRET_FILE  default for --secret-file
  DUO_ADMIN_SECRET       the secret itself, when no file is given (never pass secrets as arguments)
"""

M = TypeVar("M", bound=Message)
T = TypeVar("T")


class UsageError(Exception):
    """Invalid input found after parsing (a file that cannot be read, nothing to update)."""


def check_address(address: str) -> None:
    """HOST:PORT (a port from 1 to 65535), or a gRPC target such as unix:/run/duo.sock; ClientSetupError otherwise.

    gRPC itself would take "localhost" as port 443 and wrap a port over 65535 around.
    """
    if address.startswith(GRPC_TARGET_SCHEMES):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ClientSetupError(
            f"--address (or ${ADDRESS_ENV}) {address!r}: expected HOST:PORT with a port from 1 to 65535, "
            f"such as {DEFAULT_ADDRESS}"
        )


@dataclass
class Table(Generic[M]):
    """Items shown one per row, or as a JSON array."""

    headers: Sequence[str]
    items: Sequence[M]
    row: Callable[[M], Sequence[str]]


@dataclass
class Record:
    """One response shown as ``key: value`` lines (optionally under a heading and above a table)."""

    message: Message
    heading: str = ""
    table: Table[Any] | None = None
    exit_status: int = 0  # non-zero: the call succeeded but reports a failure (test-model)


Output = Record | Table[Any]


def render(output: Output, as_json: bool, out: TextIO) -> None:
    if isinstance(output, Table):
        if as_json:
            print_json([message_to_json(item) for item in output.items], out)
        else:
            print_table(output.headers, [output.row(item) for item in output.items], out)
        return
    if as_json:
        print_json(message_to_json(output.message), out)
        return
    if output.heading:
        print(output.heading, file=out)
    print_fields(describe(output.message), out)
    if output.table is not None:
        print(file=out)
        render(output.table, False, out)


class Clients:
    """Connects on first use, so that commands failing on input never open a channel."""

    def __init__(self, args: argparse.Namespace) -> None:
        """Raises ClientSetupError for an address, secret or TLS file that cannot be used."""
        check_address(args.address)
        self._address: str = args.address
        self._timeout: float = args.timeout or DEFAULT_TIMEOUT_SECONDS
        self._actor: str | None = args.actor
        self._secret = load_secret(args.secret_file)
        self._credentials = (
            tls_credentials(args.tls_ca, args.tls_cert, args.tls_key)
            if args.tls_ca or args.tls_cert or args.tls or args.tls_key
            else None
        )
        self._admin: AdminClient | None = None
        self._routing: RoutingClient | None = None

    @property
    def admin(self) -> AdminClient:
        if self._admin is None:
            self._admin = AdminClient(
                self._address,
                timeout=self._timeout,
                actor=self._actor,
                secret=self._secret,
                credentials=self._credentials,
            )
        return self._admin

    @property
    def routing(self) -> RoutingClient:
        if self._routing is None:
            self._routing = RoutingClient(
                self._address,
                timeout=self._timeout,
                actor=self._actor,
                secret=self._secret,
                credentials=self._credentials,
            )
        return self._routing

    def close(self) -> None:
        for client in (self._admin, self._routing):
            if client is not None:
                client.close()


# A handler returns what to show, or None when it has written its output itself (a stream).
Handler = Callable[[Clients, argparse.Namespace], Output | None]


# -- input helpers ---------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not (0 < value <= MAX_TIMEOUT_SECONDS and math.isfinite(value)):
        raise argparse.ArgumentTypeError(
            f"must be a positive number of seconds, at most {MAX_TIMEOUT_SECONDS:g}, got {text!r}"
        )
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return value


def _actor(text: str) -> str:
    try:
        return validated_actor(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


INT64_MAX = 2**63 - 1


def _id_value(text: str) -> int:
    """A GitLab id as the API carries it (int64), written in ASCII digits; ValueError otherwise."""
    text = text.strip()
    digits = text[1:] if text.startswith("-") else text
    if not (digits.isascii() and digits.isdigit()) or not -INT64_MAX - 1 <= int(text) <= INT64_MAX:
        raise ValueError(f"expected an id (a whole number up to {INT64_MAX}), got {text[:40]!r}")
    return int(text)


def _id(text: str) -> int:
    try:
        return _id_value(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _seat(text: str) -> tuple[int, int]:
    """USER:NAMESPACE, both GitLab ids."""
    user, _, namespace = text.partition(":")
    try:
        return _id_value(user), _id_value(namespace)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected USER_ID:NAMESPACE_ID, got {text[:80]!r}") from None


def _read_text(path: str, what: str) -> str:
    """The contents of a file named on the command line; "-" reads standard input."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        text.encode()  # standard input decodes undecodable bytes to surrogates, which cannot be sent
    except (OSError, UnicodeError) as error:
        reason = "not UTF-8 text" if isinstance(error, UnicodeError) else (error.strerror or str(error))
        raise UsageError(f"cannot read {what} {'standard input' if path == '-' else path}: {reason}") from None
    return text


def _read_api_token(path: str) -> str:
    token = _read_text(path, "--api-token-file").strip()
    if not token:
        raise UsageError(f"--api-token-file {path} is empty (use --clear-api-token to remove a token)")
    return token


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(f"assigned must be true or false, got {text!r}")


def _read_seat_file(path: str) -> list[admin_pb2.SeatAssignment]:
    """CSV rows user_id,namespace_id,assigned; an optional header row; blank lines ignored."""
    changes = []
    for line_number, row in enumerate(csv.reader(io.StringIO(_read_text(path, "--file"))), start=1):
        if not row or (line_number == 1 and row[0].strip() == "user_id"):
            continue
        try:
            if len(row) != 3:
                raise ValueError(f"expected 3 columns (user_id,namespace_id,assigned), got {len(row)}")
            changes.append(
                admin_pb2.SeatAssignment(
                    user_id=_id_value(row[0]), namespace_id=_id_value(row[1]), assigned=_parse_bool(row[2])
                )
            )
        except ValueError as error:
            raise UsageError(f"{path} line {line_number}: {error}") from None
    return changes


def _first(items: Iterator[T], limit: int) -> list[T]:
    """At most limit items (all when limit is 0)."""
    return list(islice(items, limit or None))


def _page_size(limit: int) -> int:
    return min(limit, LIST_PAGE_SIZE) if limit else LIST_PAGE_SIZE


# -- commands --------------------------------------------------------------------------------------


def _server_info(clients: Clients, args: argparse.Namespace) -> Output:
    return Record(clients.admin.get_server_info())


def _resolve(clients: Clients, args: argparse.Namespace) -> Output:
    return Record(clients.routing.resolve_model(args.user, args.feature, args.namespace, args.user_model))


def _picker_row(model: routing_pb2.UserSelectableModel) -> list[str]:
    return [model.identifier, model.name, model.provider, model.cost_indicator]


def _user_models(clients: Clients, args: argparse.Namespace) -> Output:
    response = clients.routing.list_user_selectable_models(args.user, args.feature, args.namespace)
    table = Table(["MODEL", "NAME", "PROVIDER", "COST"], response.selectable_models, _picker_row)
    return Record(response, table=table)


def _complete(clients: Clients, args: argparse.Namespace) -> None:
    """Streams the answer to stdout as it arrives; the route and usage go to stderr (or JSON lines with --json)."""
    prompt = args.message if args.message is not None else _read_text("-", "the message from")
    messages = ([("system", args.system)] if args.system else []) + [("user", prompt)]
    events = clients.routing.complete(
        args.user,
        args.feature,
        messages,
        root_namespace_id=args.namespace,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        timeout=args.timeout or DEFAULT_COMPLETE_TIMEOUT_SECONDS,
        user_selected_model=args.user_model,
    )
    for event in events:
        if args.json:
            print_json(message_to_json(event), sys.stdout, indent=None)
        elif event.HasField("route"):
            route = event.route
            source = enum_label(types_pb2.SelectionSource.DESCRIPTOR, route.source)
            print(f"model: {route.model_identifier or NONE} ({source})", file=sys.stderr)
        elif event.HasField("delta"):
            sys.stdout.write(event.delta.text)
        else:
            usage = event.finished.usage
            estimated = " (estimated)" if usage.estimated else ""
            sys.stdout.write("\n")
            print(
                f"finish_reason: {event.finished.finish_reason}; tokens in {usage.input_tokens}, "
                f"out {usage.output_tokens}{estimated}",
                file=sys.stderr,
            )
        sys.stdout.flush()
    return None


def _test_model(clients: Clients, args: argparse.Namespace) -> Output:
    result = clients.admin.test_self_hosted_model(args.id)
    return Record(result, exit_status=0 if result.success else EXIT_TEST_FAILED)


def _refresh_catalog(clients: Clients, args: argparse.Namespace) -> Output:
    return Record(clients.admin.refresh_catalog())


def _model_row(model: admin_pb2.SelfHostedModel) -> list[str]:
    return [
        model.id,
        model.name,
        enum_label(types_pb2.ModelFamily.DESCRIPTOR, model.family),
        enum_label(types_pb2.Platform.DESCRIPTOR, model.platform),
        model.endpoint,
        model.identifier,
        "set" if model.api_token_set else NONE,
    ]


def _models_list(clients: Clients, args: argparse.Namespace) -> Output:
    models = list(clients.admin.iter_self_hosted_models(LIST_PAGE_SIZE))
    headers = ["ID", "NAME", "FAMILY", "PLATFORM", "ENDPOINT", "IDENTIFIER", "API TOKEN"]
    return Table(headers, models, _model_row)


def _models_get(clients: Clients, args: argparse.Namespace) -> Output:
    return Record(clients.admin.get_self_hosted_model(args.id))


def _self_hosted_fields(args: argparse.Namespace) -> dict[str, str]:
    """The self-hosted model fields given on the command line, enum values by their full names."""
    values: dict[str, str] = {
        name: getattr(args, name) for name in SELF_HOSTED_FIELDS if getattr(args, name) is not None
    }
    if "family" in values:
        values["family"] = FAMILIES[values["family"]]
    if "platform" in values:
        values["platform"] = PLATFORMS[values["platform"]]
    if args.api_token_file is not None:
        values["api_token"] = _read_api_token(args.api_token_file)
    return values


def _models_create(clients: Clients, args: argparse.Namespace) -> Output:
    model = json_format.ParseDict(_self_hosted_fields(args), admin_pb2.SelfHostedModel())
    return Record(clients.admin.create_self_hosted_model(model))


def _models_update(clients: Clients, args: argparse.Namespace) -> Output:
    values = _self_hosted_fields(args)
    if args.clear_api_token:
        values["api_token"] = ""  # an empty api_token named in the mask clears the stored token
    if not values:
        raise UsageError(
            "nothing to change: give at least one of --name, --family, --platform, --endpoint, "
            "--identifier, --api-token-file, --clear-api-token"
        )
    model = json_format.ParseDict({**values, "id": args.id}, admin_pb2.SelfHostedModel())
    return Record(clients.admin.update_self_hosted_model(model, fields=values))


def _models_delete(clients: Clients, args: argparse.Namespace) -> Output:
    response = clients.admin.delete_self_hosted_model(args.id)
    return Record(response, heading=f"deleted self-hosted model {args.id}")


def _features_list(clients: Clients, args: argparse.Namespace) -> Output:
    settings = list(clients.admin.iter_feature_settings(LIST_PAGE_SIZE))
    return Table(
        ["FEATURE", "TITLE", "PROVIDER", "SELF-HOSTED MODEL", "EXPLICIT", "NOTE"],
        settings,
        lambda s: [
            s.feature,
            s.title,
            enum_label(admin_pb2.FeatureProvider.DESCRIPTOR, s.provider),
            s.self_hosted_model_id,
            "yes" if s.explicitly_set else NONE,
            "no model configured" if s.no_model_configured else "",
        ],
    )


def _features_set(clients: Clients, args: argparse.Namespace) -> Output:
    response = clients.admin.update_feature_setting(args.feature, FEATURE_PROVIDERS[args.provider], args.model or "")
    return Record(response)


def _selection_table(selections: Sequence[admin_pb2.ModelSelection]) -> Table[admin_pb2.ModelSelection]:
    return Table(
        ["FEATURE", "PINNED", "EFFECTIVE MODEL", "GITLAB DEFAULT", "NOTE"],
        selections,
        lambda s: [
            s.feature,
            s.offered_model_ref,
            s.effective_model_identifier,
            s.default_model_identifier,
            _selection_note(s),
        ],
    )


def _selection_note(selection: admin_pb2.ModelSelection) -> str:
    notes = []
    if selection.pinned_model_unavailable:
        notes.append("pinned model unavailable, default used")
    if selection.pinned_model_unreachable:
        notes.append("pinned model unreachable (offline license), not used")
    if selection.pinned_model_deprecated:
        removal = selection.deprecation_removal_version
        notes.append(f"pinned model deprecated (removed in {removal})" if removal else "pinned model deprecated")
    return "; ".join(notes)


def _selected_ref(args: argparse.Namespace) -> str:
    """--model REF, or "" (the GitLab default) for --default or --model ''."""
    return "" if args.default else args.model


def _instance_models_list(clients: Clients, args: argparse.Namespace) -> Output:
    return _selection_table(list(clients.admin.iter_instance_model_selections(LIST_PAGE_SIZE)))


def _instance_models_set(clients: Clients, args: argparse.Namespace) -> Output:
    response = clients.admin.update_instance_model_selection(
        args.feature,
        _selected_ref(args),
        validate_only=args.validate_only,
        apply_to_sub_features=args.apply_to_sub_features,
    )
    return _pin_update(response)


def _namespace_models_list(clients: Clients, args: argparse.Namespace) -> Output:
    selections = clients.admin.iter_namespace_model_selections(args.namespace, LIST_PAGE_SIZE)
    return _selection_table(list(selections))


def _namespace_models_set(clients: Clients, args: argparse.Namespace) -> Output:
    response = clients.admin.update_namespace_model_selection(
        args.namespace,
        args.feature,
        _selected_ref(args),
        validate_only=args.validate_only,
        apply_to_sub_features=args.apply_to_sub_features,
    )
    return _pin_update(response)


PinUpdate = admin_pb2.UpdateInstanceModelSelectionResponse | admin_pb2.UpdateNamespaceModelSelectionResponse
VALIDATE_ONLY_HEADING = "validate only: nothing was written; this is what the change would do"


def _pin_update(response: PinUpdate) -> Output:
    """The selection and the impact as fields; the sub-features set or skipped ("apply to all") as a table."""
    rows: list[admin_pb2.ModelSelection | admin_pb2.SkippedSubFeature] = [
        *response.sub_feature_selections,
        *response.skipped_sub_features,
    ]
    table = Table(["SUB-FEATURE", "RESULT", "MODEL OR REASON"], rows, _sub_feature_row) if rows else None
    return Record(response, heading=VALIDATE_ONLY_HEADING if response.validate_only else "", table=table)


def _sub_feature_row(item: admin_pb2.ModelSelection | admin_pb2.SkippedSubFeature) -> list[str]:
    if isinstance(item, admin_pb2.SkippedSubFeature):
        return [item.feature, "skipped", f"{item.reason}: {item.message}"]
    return [item.feature, "set" if item.offered_model_ref else "cleared", item.effective_model_identifier]


def _allowlist_row(selection: admin_pb2.ModelSelection) -> list[str]:
    allowlist = selection.allowlist
    scope = f"namespace {selection.namespace_id}" if selection.namespace_id else "instance"
    return [
        selection.feature,
        scope,
        "on" if allowlist.enabled else "off",
        selection.offered_model_ref + (" (hard pin)" if selection.hard_pin else ""),
        ",".join(allowlist.model_refs),
        ",".join(allowlist.allowed_model_identifiers),
        ",".join(allowlist.stale_model_refs),
    ]


def _allowlist_show(clients: Clients, args: argparse.Namespace) -> Output:
    if args.namespace is not None:
        selections = clients.admin.iter_namespace_model_selections(args.namespace, LIST_PAGE_SIZE)
    else:
        selections = clients.admin.iter_instance_model_selections(LIST_PAGE_SIZE)
    shown = [s for s in selections if s.user_selectable and args.feature in ("", s.feature)]
    headers = ["FEATURE", "SCOPE", "ALLOWLIST", "PIN", "MODELS", "USERS MAY CHOOSE", "STALE"]
    return Table(headers, shown, _allowlist_row)


def _update_allowlist(args: argparse.Namespace, clients: Clients, enabled: bool) -> Output:
    refs = args.model if enabled else []
    response: admin_pb2.UpdateNamespaceModelAllowlistResponse | admin_pb2.UpdateInstanceModelAllowlistResponse
    if args.namespace is not None:
        response = clients.admin.update_namespace_model_allowlist(args.namespace, args.feature, enabled, refs)
    else:
        response = clients.admin.update_instance_model_allowlist(args.feature, enabled, refs)
    dropped = Table(
        ["DROPPED MODEL", "REASON", "WHY"], response.dropped_model_refs, lambda d: [d.model_ref, d.reason, d.message]
    )
    return Record(response, table=dropped if response.dropped_model_refs else None)


def _allowlist_set(clients: Clients, args: argparse.Namespace) -> Output:
    return _update_allowlist(args, clients, enabled=True)


def _allowlist_clear(clients: Clients, args: argparse.Namespace) -> Output:
    return _update_allowlist(args, clients, enabled=False)


def _catalog(clients: Clients, args: argparse.Namespace) -> Output:
    features = list(clients.admin.iter_selectable_models(args.feature or "", LIST_PAGE_SIZE))
    return Table(
        ["FEATURE", "DEFAULT", "SELECTABLE", "BETA", "DEPRECATED", "TEAM-ONLY"],
        features,
        lambda f: [
            f.feature,
            _catalog_default(f),
            ",".join(m.identifier for m in f.selectable_models),
            ",".join(m.identifier for m in f.beta_models),
            ",".join(dict.fromkeys(_deprecated_label(m) for m in f.selectable_models if m.removal_version)),
            ",".join(m.identifier for m in f.team_only_models),
        ],
    )


def _catalog_default(feature: admin_pb2.SelectableModels) -> str:
    """The default model, or a load-balanced group with the real models behind it."""
    if feature.default_model_group:
        return f"{feature.default_model_group} ({','.join(m.identifier for m in feature.default_models)})"
    return feature.default_model.identifier


def _deprecated_label(model: admin_pb2.CatalogModel) -> str:
    return f"{model.identifier} (removed in {model.removal_version})"


def _seats_sync(clients: Clients, args: argparse.Namespace) -> Output:
    changes = _read_seat_file(args.file) if args.file else []
    changes += [admin_pb2.SeatAssignment(user_id=u, namespace_id=n, assigned=True) for u, n in args.assign]
    changes += [admin_pb2.SeatAssignment(user_id=u, namespace_id=n, assigned=False) for u, n in args.remove]
    if not changes:
        raise UsageError("no seat changes: give --assign, --remove or --file")
    return Record(clients.admin.sync_seat_assignments(changes))


def _seats_list(clients: Clients, args: argparse.Namespace) -> Output:
    seats = clients.admin.iter_seat_assignments(args.user, args.namespace, _page_size(args.limit))
    return Table(["USER", "NAMESPACE"], _first(seats, args.limit), lambda s: [str(s.user_id), str(s.namespace_id)])


def _default_namespace_set(clients: Clients, args: argparse.Namespace) -> Output:
    return Record(clients.admin.set_user_default_namespace(args.user, args.namespace))


def _default_namespace_clear(clients: Clients, args: argparse.Namespace) -> Output:
    return Record(clients.admin.set_user_default_namespace(args.user, 0))


def _feature_status_row(status: admin_pb2.FeatureRoutingStatus) -> list[str]:
    if not status.HasField("resolution"):
        return [status.feature, "error", status.error_reason, NONE, NONE]
    resolution = status.resolution
    return [
        status.feature,
        enum_label(types_pb2.Provider.DESCRIPTOR, resolution.provider),
        resolution.model_identifier,
        enum_label(types_pb2.SelectionSource.DESCRIPTOR, resolution.source),
        str(resolution.governing_namespace_id or NONE),
    ]


def _user_status(clients: Clients, args: argparse.Namespace) -> Output:
    response = clients.admin.get_user_routing_status(args.user, args.user_model)
    table = Table(
        ["FEATURE", "PROVIDER", "MODEL OR ERROR", "SOURCE", "NAMESPACE"], response.features, _feature_status_row
    )
    return Record(response, table=table)


def _audit(clients: Clients, args: argparse.Namespace) -> Output:
    events = clients.admin.iter_audit_events(args.resource_prefix, _page_size(args.limit))
    return Table(
        ["ID", "TIME", "ACTOR", "ACTION", "RESOURCE", "BEFORE -> AFTER"],
        _first(events, args.limit),
        lambda e: [
            str(e.id),
            timestamp_label(e.time),
            e.actor,
            e.action,
            e.resource,
            f"{e.before_json or '(none)'} -> {e.after_json or '(none)'}",
        ],
    )


# -- parser ----------------------------------------------------------------------------------------


def _add_global_options(parser: argparse.ArgumentParser, with_defaults: bool) -> None:
    """The same options before and after the command; only the top-level parser sets defaults,
    so that a subcommand does not overwrite a value given before it."""

    def default(value: Any) -> Any:
        return value if with_defaults else argparse.SUPPRESS

    group = parser.add_argument_group("global options")
    group.add_argument(
        "--address",
        metavar="HOST:PORT",
        default=default(os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS),
        help=f"the sidecar's gRPC address (default: ${ADDRESS_ENV} or {DEFAULT_ADDRESS})",
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_float,
        default=default(None),
        help=f"deadline of each call (default: {DEFAULT_TIMEOUT_SECONDS:g}; "
        f"complete: {DEFAULT_COMPLETE_TIMEOUT_SECONDS:g})",
    )
    group.add_argument(
        "--actor",
        type=_actor,
        default=default(None),
        help="who you are, recorded in the audit log (default: $USER@hostname)",
    )
    group.add_argument(
        "--secret-file",
        metavar="PATH",
        default=default(None),
        help=f"the admin (or client) secret that signs each call (default: ${SECRET_FILE_ENV}, or ${SECRET_ENV})",
    )
    group.add_argument("--tls", action="store_true", default=default(False), help="connect with TLS (system CAs)")
    group.add_argument("--tls-ca", metavar="PATH", default=default(None), help="CA certificate of the sidecar (TLS)")
    group.add_argument("--tls-cert", metavar="PATH", default=default(None), help="client certificate (mutual TLS)")
    group.add_argument("--tls-key", metavar="PATH", default=default(None), help="client private key (mutual TLS)")
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print JSON instead of text (lists: a JSON array of all items)",
    )


class _Commands:
    """Adds commands to a subparsers action; every command gets --help, the global options and a handler."""

    def __init__(self, parser: argparse.ArgumentParser, title: str) -> None:
        self._subparsers = parser.add_subparsers(title=title, metavar="COMMAND", required=True)

    def add(self, name: str, description: str, handler: Handler | None = None) -> argparse.ArgumentParser:
        parser = self._subparsers.add_parser(name, help=description, description=description)
        if handler is not None:
            _add_global_options(parser, with_defaults=False)
            parser.set_defaults(handler=handler, command_parser=parser)
        return parser


def _add_model_reference(parser: argparse.ArgumentParser) -> None:
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument(
        "--model", metavar="REF", help="identifier of a selectable model (see catalog); '' for the GitLab default"
    )
    choice.add_argument("--default", action="store_true", help="restore the GitLab default model")


def _add_pin_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--validate-only",
        action="store_true",
        help="write nothing: check the change and show what it would do (on GitLab.com, how many users' "
        "no-context answers change and how many would newly need a default namespace)",
    )
    parser.add_argument(
        "--apply-to-sub-features",
        action="store_true",
        help="duo_chat only: set every duo_chat_* sub-feature the same way in the same change (sub-features "
        "that do not offer the model are skipped and listed); with --default, clear their own pins too",
    )


def _one_of(what: str, choices: Iterable[str]) -> str:
    return f"{what}: {', '.join(choices)}"


def _add_self_hosted_fields(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--name", required=required, help="unique display name")
    parser.add_argument(
        "--family", required=required, choices=FAMILIES, metavar="FAMILY", help=_one_of("GitLab model family", FAMILIES)
    )
    parser.add_argument(
        "--platform", required=required, choices=PLATFORMS, metavar="PLATFORM", help=_one_of("serving", PLATFORMS)
    )
    parser.add_argument("--endpoint", metavar="URL", required=required, help="base URL, for vLLM ending in /v1")
    parser.add_argument(
        "--identifier",
        required=required,
        help="custom_openai/<served model name>, azure/<deployment> or bedrock/<model id>",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="duo-admin",
        description="Configure the GitLab Duo routing sidecar.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"duo-admin {_version()}")
    _add_global_options(parser, with_defaults=True)
    commands = _Commands(parser, "commands")

    commands.add("server-info", "describe the sidecar: version, deployment type, catalog and config", _server_info)

    resolve = commands.add("resolve", "show which model serves a request (ResolveModel)", _resolve)
    resolve.add_argument("--user", type=_id, required=True, help="GitLab user id")
    resolve.add_argument("--feature", required=True, help="feature_setting name, such as duo_chat")
    resolve.add_argument(
        "--namespace", type=_id, default=0, help="root namespace the request is about (default: 0, no context)"
    )
    resolve.add_argument("--user-model", metavar="REF", default="", help="the model the user picked (user_selection)")

    user_models = commands.add(
        "user-models", "show what a user's model picker offers for a feature (ListUserSelectableModels)", _user_models
    )
    user_models.add_argument("--user", type=_id, required=True, help="GitLab user id")
    user_models.add_argument(
        "--feature", default=AGENTIC_CHAT, help=f"a user-selectable feature_setting (default: {AGENTIC_CHAT})"
    )
    user_models.add_argument(
        "--namespace", type=_id, default=0, help="root namespace the picker is shown for (default: 0, no context)"
    )

    complete = commands.add(
        "complete", "stream a completion from the model the request routes to (Complete)", _complete
    )
    complete.add_argument("--user", type=_id, required=True, help="GitLab user id")
    complete.add_argument("--feature", required=True, help="feature_setting name, such as duo_chat")
    complete.add_argument("--namespace", type=_id, default=0, help="root namespace the request is about (default: 0)")
    complete.add_argument("--message", help="the user message (default: read from stdin)")
    complete.add_argument("--system", help="a system message sent before it")
    complete.add_argument("--max-tokens", type=_non_negative_int, default=0, help="upper bound on generated tokens")
    complete.add_argument("--temperature", type=float, help="sampling temperature, 0 to 2")
    complete.add_argument("--user-model", metavar="REF", default="", help="the model the user picked")

    test_model = commands.add(
        "test-model", "send a small real request to a self-hosted model and report the outcome", _test_model
    )
    test_model.add_argument("id", help="self-hosted model id")

    commands.add("refresh-catalog", "fetch the model catalog from the AI Gateway now", _refresh_catalog)

    models = _Commands(commands.add("models", "self-hosted models (Dedicated, Self-Managed)"), "model commands")
    models.add("list", "list self-hosted models", _models_list)
    models.add("get", "show one self-hosted model", _models_get).add_argument("id", help="model id")
    create = models.add("create", "register a self-hosted model", _models_create)
    _add_self_hosted_fields(create, required=True)
    create.add_argument("--api-token-file", metavar="PATH", help="file holding the endpoint's API token ('-': stdin)")
    update = models.add("update", "change the given fields of a self-hosted model", _models_update)
    update.add_argument("id", help="model id")
    _add_self_hosted_fields(update, required=False)
    token = update.add_mutually_exclusive_group()
    token.add_argument("--api-token-file", metavar="PATH", help="file holding the new API token ('-': stdin)")
    token.add_argument("--clear-api-token", action="store_true", help="remove the stored API token")
    delete = models.add("delete", "delete a self-hosted model (refused while a feature uses it)", _models_delete)
    delete.add_argument("id", help="model id")

    features = _Commands(commands.add("features", "feature settings (Dedicated, Self-Managed)"), "feature commands")
    features.add("list", "list every feature with its provider", _features_list)
    feature_set = features.add(
        "set", "serve a feature by the AI Gateway, a self-hosted model, or disable it", _features_set
    )
    feature_set.add_argument("--feature", required=True, help="feature_setting name, such as duo_chat")
    feature_set.add_argument(
        "--provider",
        required=True,
        choices=FEATURE_PROVIDERS,
        metavar="PROVIDER",
        help=_one_of("who serves the feature", FEATURE_PROVIDERS),
    )
    feature_set.add_argument("--model", metavar="ID", help="self-hosted model id (with --provider self_hosted)")

    instance = _Commands(
        commands.add("instance-models", "instance-wide model selection (Dedicated, Self-Managed)"),
        "instance model commands",
    )
    instance.add("list", "list the instance's model for every feature", _instance_models_list)
    instance_set = instance.add("set", "pin a model for a feature on the whole instance", _instance_models_set)
    instance_set.add_argument("--feature", required=True, help="feature_setting name")
    _add_model_reference(instance_set)
    _add_pin_options(instance_set)

    namespace = _Commands(
        commands.add("namespace-models", "model selection of a top-level namespace (GitLab.com)"),
        "namespace model commands",
    )
    namespace_list = namespace.add("list", "list a namespace's model for every feature", _namespace_models_list)
    namespace_list.add_argument("--namespace", type=_id, required=True, help="top-level namespace id")
    namespace_set = namespace.add("set", "pin a model for a feature in a namespace", _namespace_models_set)
    namespace_set.add_argument("--namespace", type=_id, required=True, help="top-level namespace id")
    namespace_set.add_argument("--feature", required=True, help="feature_setting name")
    _add_model_reference(namespace_set)
    _add_pin_options(namespace_set)

    allowlist = _Commands(
        commands.add(
            "allowlist",
            "which models users may choose for a user-selectable feature: a namespace's with --namespace "
            "(GitLab.com), else the instance's (Dedicated, Self-Managed)",
        ),
        "allowlist commands",
    )
    scope_help = "top-level namespace id (GitLab.com); without it, the instance's allowlist"
    allowlist_show = allowlist.add("show", "show the allowlist of every user-selectable feature", _allowlist_show)
    allowlist_show.add_argument("--namespace", type=_id, help=scope_help)
    allowlist_show.add_argument("--feature", default="", help="only this feature")
    allowlist_set = allowlist.add(
        "set",
        "turn the allowlist on with these models: users choose among them and the pin (now only a default)",
        _allowlist_set,
    )
    allowlist_set.add_argument("--namespace", type=_id, help=scope_help)
    allowlist_set.add_argument("--feature", required=True, help="a user-selectable feature_setting name")
    allowlist_set.add_argument(
        "--model",
        metavar="REF",
        action="append",
        default=[],
        help="a model users may choose (repeatable, up to 100); none: only the pin or the default",
    )
    allowlist_clear = allowlist.add(
        "clear", "turn the allowlist off and forget its models (a pin is a hard pin again)", _allowlist_clear
    )
    allowlist_clear.add_argument("--namespace", type=_id, help=scope_help)
    allowlist_clear.add_argument("--feature", required=True, help="a user-selectable feature_setting name")

    catalog = commands.add("catalog", "list each feature's default and selectable models", _catalog)
    catalog.add_argument("--feature", help="only this feature")

    seats = _Commands(commands.add("seats", "GitLab Duo seat assignments (GitLab.com)"), "seat commands")
    sync = seats.add(
        "sync", "assign and remove seats; applied in order: --file, then --assign, then --remove", _seats_sync
    )
    for option, verb in (("--assign", "give"), ("--remove", "take away")):
        sync.add_argument(
            option,
            metavar="USER:NAMESPACE",
            type=_seat,
            action="append",
            default=[],
            help=f"{verb} a seat in a top-level namespace (repeatable)",
        )
    sync.add_argument(
        "--file", metavar="CSV", help="rows user_id,namespace_id,assigned (true/false), optional header; '-': stdin"
    )
    seats_list = seats.add("list", "list assigned seats", _seats_list)
    seats_list.add_argument("--user", type=_id, default=0, help="only this user's seats")
    seats_list.add_argument("--namespace", type=_id, default=0, help="only this namespace's seats")
    seats_list.add_argument("--limit", type=_non_negative_int, default=0, help="at most N seats (default: 0, all)")

    defaults = _Commands(
        commands.add("default-namespace", "users' default GitLab Duo namespace (GitLab.com)"),
        "default namespace commands",
    )
    default_set = defaults.add(
        "set", "set a user's default namespace (they must hold a seat there)", _default_namespace_set
    )
    default_set.add_argument("--user", type=_id, required=True, help="GitLab user id")
    default_set.add_argument("--namespace", type=_id, required=True, help="namespace id")
    defaults.add("clear", "clear a user's default namespace", _default_namespace_clear).add_argument(
        "--user", type=_id, required=True, help="GitLab user id"
    )

    status = commands.add("user-status", "explain how a user's no-context requests are routed", _user_status)
    status.add_argument("--user", type=_id, required=True, help="GitLab user id")
    status.add_argument(
        "--user-model", metavar="REF", default="", help="show what this choice resolves to (user-selectable features)"
    )

    audit = commands.add("audit", "list admin changes, newest first", _audit)
    audit.add_argument("--resource-prefix", default="", help="only resources starting with this, e.g. namespaces/42/")
    audit.add_argument(
        "--limit",
        type=_non_negative_int,
        default=DEFAULT_AUDIT_LIMIT,
        help=f"at most N events (default: {DEFAULT_AUDIT_LIMIT}; 0 for all)",
    )
    return parser


def _version() -> str:
    try:
        return metadata.version("duo-routing-sidecar")
    except metadata.PackageNotFoundError:
        return "unknown"


def _local_error(message: str) -> int:
    """A problem on this side, found before anything was sent: one line, exit status 2."""
    print(f"duo-admin: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        clients = Clients(args)
    except ClientSetupError as error:
        return _local_error(str(error))
    exit_status = 0
    try:
        output = args.handler(clients, args)
        if output is not None:
            render(output, args.json, sys.stdout)
            exit_status = output.exit_status if isinstance(output, Record) else 0
        sys.stdout.flush()
    except UsageError as error:
        args.command_parser.error(str(error))  # prints usage, exits with status 2 like argparse
    except UnicodeError as error:  # text from the command line that is not UTF-8 cannot be sent
        return _local_error(f"the input is not valid UTF-8 text ({error})")
    except DuoAdminError as error:
        print_error(error, sys.stderr)
        if error.code == "UNAVAILABLE" and not error.reason:  # gRPC's own failure: nothing answered
            print(
                f"hint: is duo-sidecar running there? Set the address with --address or ${ADDRESS_ENV}", file=sys.stderr
            )
        return EXIT_RPC_ERROR
    except BrokenPipeError:
        # The reader left (`duo-admin audit | head`); point stdout at /dev/null so the exit flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return 130
    finally:
        clients.close()
    return exit_status
