"""What the Duo routing sidecar and its clients share, with no server dependency: token signing and error details.

The generated gRPC code, the other shared part, is the `gitlab.duo.routing.v1` package next to this one. Nothing
here may import `sidecar` or a package only the server needs: `import duo_admin.client` loads this package.
"""
