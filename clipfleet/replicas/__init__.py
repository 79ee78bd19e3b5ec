"""What each Serve replica does, as plain classes: the deployments in `deployments/` only add
Serve's decorators, `@serve.batch` and the replica context; tests drive these without Ray."""

LOCAL_REPLICA = "local"  # the replica id outside Serve
