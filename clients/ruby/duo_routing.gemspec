# frozen_string_literal: true

require_relative "lib/duo_routing/version"

Gem::Specification.new do |spec|
  spec.name = "duo_routing"
  spec.version = DuoRouting::VERSION
  spec.summary = "GitLab Rails client for the Duo routing sidecar"
  spec.description = "ResolveModel and streamed Complete calls to the Duo routing sidecar, with v2 HMAC " \
                     "tokens, deadlines and typed errors; includes the generated gitlab.duo.routing.v1 code."
  spec.authors = ["GitLab"]
  spec.license = "MIT"
  spec.required_ruby_version = ">= 3.0"
  spec.files = Dir.chdir(__dir__) { Dir["lib/**/*.rb"] + ["README.md"] }
  spec.require_paths = ["lib"]

  # Tested with what Debian bookworm packages (ruby-grpc, ruby-google-protobuf, ruby-googleapis-common-protos-types).
  # The generated code uses the descriptor DSL, which google-protobuf 4 no longer has.
  spec.add_dependency "googleapis-common-protos-types", "~> 1.4"
  spec.add_dependency "google-protobuf", "~> 3.21"
  spec.add_dependency "grpc", "~> 1.51"
end
