"""deploy/ holds no Python the stages import; `deploy.local` is the local cluster harness."""
