# frozen_string_literal: true

# Tests run from tests/test_ruby_client.py (inside `make test`), which starts real sidecars and passes their
# addresses in DUO_SIDECAR_<DEPLOYMENT_TYPE>_ADDRESS:
#   ruby -Iclients/ruby/lib -Iclients/ruby/test clients/ruby/test/<file>_test.rb
require "minitest/autorun"
require "securerandom"
require "duo_routing"
require "gitlab/duo/routing/v1/admin_services_pb"
require "support/fake_openai_server"

module DuoRoutingTest
  V1 = Gitlab::Duo::Routing::V1

  # GitLab's user-facing text, copied from DESIGN section 2: the sidecar must send exactly this.
  DEFAULT_NAMESPACE_REQUIRED_MESSAGE =
    "I'm sorry, you have not selected a default GitLab Duo namespace. Please go to GitLab and in user " \
    "Preferences - Behavior, select a default namespace for GitLab Duo."

  module_function

  def sidecar_address(deployment_type)
    name = "DUO_SIDECAR_#{deployment_type.to_s.upcase}_ADDRESS"
    ENV.fetch(name) { raise "#{name} is not set: run these tests through tests/test_ruby_client.py" }
  end

  # Test set-up goes through the generated AdminService stub, as Rails' settings pages would.
  class Admin
    def initialize(address)
      @stub = V1::AdminService::Stub.new(address, :this_channel_is_insecure)
    end

    def call(method, request)
      @stub.public_send(method, request, deadline: Time.now + 5, metadata: { "x-duo-actor" => "ruby-client-test" })
    end

    def assign_seats(pairs)
      changes = pairs.map do |user_id, namespace_id|
        V1::SeatAssignment.new(user_id: user_id, namespace_id: namespace_id, assigned: true)
      end
      @stub.sync_seat_assignments([V1::SyncSeatAssignmentsRequest.new(assignments: changes)].each,
                                  deadline: Time.now + 5, metadata: { "x-duo-actor" => "ruby-client-test" })
    end

    def pin_namespace_model(namespace_id, feature, model)
      call(:update_namespace_model_selection,
           V1::UpdateNamespaceModelSelectionRequest.new(namespace_id: namespace_id, feature: feature,
                                                        offered_model_ref: model))
    end

    def set_default_namespace(user_id, namespace_id)
      call(:set_user_default_namespace,
           V1::SetUserDefaultNamespaceRequest.new(user_id: user_id, namespace_id: namespace_id))
    end

    # Registers an OpenAI-compatible self-hosted model and returns its id.
    def create_openai_model(name, endpoint, api_token: "")
      model = V1::SelfHostedModel.new(name: name, family: :MODEL_FAMILY_MIXTRAL, platform: :PLATFORM_OPENAI_COMPATIBLE,
                                      endpoint: endpoint, identifier: "custom_openai/#{name}", api_token: api_token)
      call(:create_self_hosted_model,
           V1::CreateSelfHostedModelRequest.new(self_hosted_model: model)).self_hosted_model.id
    end

    def set_feature(feature, provider, self_hosted_model_id: "")
      call(:update_feature_setting,
           V1::UpdateFeatureSettingRequest.new(feature: feature, provider: provider,
                                               self_hosted_model_id: self_hosted_model_id))
    end
  end

  # Set-up for tests against the Self-Managed sidecar: an admin stub, a client, and a fake OpenAI-compatible
  # upstream that self-hosted models can point at.
  module SelfHostedModels
    DELTAS = ["Hello", ", ", "Rails", "!"].freeze

    def setup
      address = DuoRoutingTest.sidecar_address(:self_managed)
      @admin = Admin.new(address)
      @client = DuoRouting::Client.new(address: address, secret: nil)
      @upstream = FakeOpenAIServer.new(deltas: DELTAS, usage: { prompt_tokens: 21, completion_tokens: 4 })
    end

    def teardown
      @client.close
      @upstream.stop
    end

    # Registers a model named after the test, unique per run (names are unique in a sidecar, which may be
    # reused when a file is run by hand); returns [name, id].
    def register_model(suffix = "", api_token: "")
      model_name = "fake-#{name.delete_prefix('test_').tr('_', '-')[0, 40]}-#{SecureRandom.hex(3)}#{suffix}"
      [model_name, @admin.create_openai_model(model_name, @upstream.endpoint, api_token: api_token)]
    end
  end
end
