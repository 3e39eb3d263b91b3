# The ACL policy Stevedore's Nomad token needs, and nothing more, in the namespace its tries
# run in (`nomad_namespace`; "default" when unset). Each capability and the endpoint that
# checks it (Nomad's source):
#   list-jobs   GET /v1/jobs: the backend's health check and listing its running tries
#               (nomad/job_endpoint.go, List)
#   read-job    GET /v1/job/:id, its allocations and evaluations, GET /v1/allocation/:id:
#               following a try (nomad/job_endpoint.go, nomad/alloc_endpoint.go)
#   submit-job  PUT /v1/jobs and DELETE /v1/job/:id: starting and stopping a try
#               (nomad/job_endpoint.go, Register, Deregister)
#   read-logs   GET /v1/client/fs/logs/:alloc: the try's stdout and stderr
#               (client/fs_endpoint.go, logs)
#   read-fs     GET /v1/client/fs/ls/:alloc and /v1/client/fs/cat/:alloc: reading back the
#               files a try left in its workspace, with an S3 artifact store
#               (client/fs_endpoint.go, List, Stream)
#
#   nomad acl policy apply -namespace stevedore -description "Stevedore's tries" \
#     stevedore deploy/nomad/stevedore-policy.hcl
#   nomad acl token create -name stevedore -policy stevedore
#
# tests/e2e/nomad.rs runs a try against the simulator with exactly these capabilities.
namespace "stevedore" {
  capabilities = ["list-jobs", "read-job", "submit-job", "read-logs", "read-fs"]
}
