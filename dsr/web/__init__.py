"""HTTP plumbing shared by every server of the project (intake, codec server, sandboxes): bounded request
bodies and the loopback uvicorn runner. No project imports."""
