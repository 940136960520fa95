"""Python client and ``duo-admin`` command-line tool for the GitLab Duo routing sidecar."""

from duo_admin.client import AdminClient, DuoAdminError, RoutingClient
from duo_common.errors import FieldViolation, PreconditionViolation

__all__ = ["AdminClient", "DuoAdminError", "FieldViolation", "PreconditionViolation", "RoutingClient"]
