# Extra configuration for `nomad agent -dev` when running Stevedore's backend contract suite
# against it (deploy/nomad/README.md): docker volumes (the scheduler's own job mounts the
# Docker socket), and no image garbage collection (the test images are built locally and
# never pushed).
plugin "docker" {
  config {
    volumes {
      enabled = true
    }
    gc {
      image = false
    }
  }
}
