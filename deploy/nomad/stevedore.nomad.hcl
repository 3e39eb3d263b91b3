# Stevedore itself on Nomad: two schedulers and the server as Nomad services, against an
# external PostgreSQL. Tries of `backend: docker` tasks run on the Docker engine of the
# client a scheduler is placed on (its socket is mounted); tries of `backend: nomad` tasks
# are Nomad batch jobs of their own, which the schedulers submit through NOMAD_ADDR.
#
#   nomad var put nomad/jobs/stevedore db_url='postgres://stevedore:...@db.internal:5432/stevedore' \
#       secret_key="$(head -c 32 /dev/urandom | base64)" nomad_token='...'
#   nomad job run -var image=registry.internal:5000/stevedore/stevedore:0.1.0 deploy/nomad/stevedore.nomad.hcl
#
# The image is built by deploy/image/build.sh and pushed to a registry the clients reach.
# Every setting is a STEVEDORE_* / NOMAD_* variable (docs/configuration.md); secrets come from
# the Nomad Variable above through templates, never from the job file.

variable "image" {
  type        = string
  description = "The Stevedore image (deploy/image/build.sh), as the clients pull it."
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "docker_gid" {
  type        = string
  default     = "999"
  description = "The GID of the Docker socket's group on the clients (stat -c %g /var/run/docker.sock). A number: Docker looks a group name up in the image's /etc/group, which has no docker group."
}

variable "tries_namespace" {
  type        = string
  default     = "stevedore"
  description = "The namespace the tries of backend: nomad tasks run in, the one the token's policy names (deploy/nomad/stevedore-policy.hcl)."
}

variable "jobs_dir" {
  type        = string
  default     = "/etc/stevedore/jobs"
  description = "The job files' folder on every client (a host volume or a synced folder)."
}

job "stevedore" {
  type        = "service"
  datacenters = var.datacenters

  group "scheduler" {
    # Two schedulers: either carries on alone when the other dies (leases and fencing in
    # PostgreSQL; docs/operations.md).
    count = 2

    spread {
      attribute = "${node.unique.id}"
    }

    restart {
      attempts = 10
      interval = "10m"
      delay    = "5s"
      mode     = "delay"
    }

    task "scheduler" {
      driver = "docker"

      config {
        image   = var.image
        args    = ["scheduler"]
        volumes = [
          "/var/run/docker.sock:/var/run/docker.sock",
          "${var.jobs_dir}:/etc/stevedore/jobs:ro",
        ]
        # The socket's group on the clients, by number: the image runs as uid 10001, and
        # Docker resolves a group name in the image's /etc/group (drivers/docker/driver.go
        # hands group_add to the container's HostConfig.GroupAdd as it is).
        group_add = [var.docker_gid]
      }

      env {
        STEVEDORE_JOBS            = "/etc/stevedore/jobs"
        STEVEDORE_HEARTBEAT_EVERY = "5s"
        STEVEDORE_LEASE           = "30s"
        STEVEDORE_SHUTDOWN_GRACE  = "0s"
        # Tries of `backend: nomad` tasks are submitted to this cluster, in their own
        # namespace. Nomad sets NOMAD_NAMESPACE in every task to the task's own job's
        # namespace; a task's env overrides it (client/taskenv/env.go, buildEnv), so the
        # schedulers do not submit tries into their own namespace.
        NOMAD_ADDR                = "http://${attr.unique.network.ip-address}:4646"
        NOMAD_NAMESPACE           = var.tries_namespace
        STEVEDORE_NOMAD_DATACENTERS = join(",", var.datacenters)
      }

      template {
        destination = "secrets/stevedore.env"
        env         = true
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/stevedore" }}
          STEVEDORE_DB={{ .db_url }}
          STEVEDORE_SECRET_KEY={{ .secret_key }}
          NOMAD_TOKEN={{ .nomad_token }}
          {{ end }}
        EOT
      }

      # Leave running tries to the other scheduler rather than waiting for them.
      kill_timeout = "10s"

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }

  group "server" {
    count = 1

    network {
      port "http" {
        to = 8080
      }
    }

    service {
      name     = "stevedore"
      port     = "http"
      provider = "nomad"

      check {
        type     = "http"
        path     = "/api/v1/health"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "server" {
      driver = "docker"

      config {
        image   = var.image
        args    = ["server"]
        ports   = ["http"]
        volumes = ["${var.jobs_dir}:/etc/stevedore/jobs:ro"]
      }

      env {
        STEVEDORE_BIND = "0.0.0.0"
        STEVEDORE_PORT = "8080"
        STEVEDORE_JOBS = "/etc/stevedore/jobs"
      }

      template {
        destination = "secrets/stevedore.env"
        env         = true
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/stevedore" }}
          STEVEDORE_DB={{ .db_url }}
          STEVEDORE_SECRET_KEY={{ .secret_key }}
          {{ end }}
        EOT
      }

      resources {
        cpu    = 300
        memory = 256
      }
    }
  }
}
