# frozen_string_literal: true

require "test_helper"

# DuoRouting::Client#complete against a real Self-Managed sidecar whose self-hosted models point at a fake
# OpenAI-compatible server on 127.0.0.1.
class CompletionTest < Minitest::Test
  include DuoRoutingTest
  include DuoRoutingTest::SelfHostedModels

  def test_streamed_completion_from_a_self_hosted_model
    name, id = register_model(api_token: "upstream-token")
    @admin.set_feature("duo_chat", :FEATURE_PROVIDER_SELF_HOSTED, self_hosted_model_id: id)
    seen = []
    messages = [{ role: "system", content: "Be brief." }, { role: "user", content: "Greet Rails" }]

    result = @client.complete(user_id: 1, feature: "duo_chat", messages: messages, max_tokens: 16) do |text|
      seen << text
    end

    assert_equal DELTAS, seen, "deltas arrive in order, one per upstream chunk"
    assert_equal "Hello, Rails!", result.text
    assert_equal "stop", result.finish_reason
    assert_equal [21, 4, false], [result.input_tokens, result.output_tokens, result.usage_estimated],
                 "the usage the upstream reported, not an estimate"
    assert_equal :PROVIDER_SELF_HOSTED, result.route.provider
    assert_equal "custom_openai/#{name}", result.route.model_identifier

    sent = @upstream.requests.last
    assert_equal "POST /v1/chat/completions", "#{sent.verb} #{sent.path}"
    assert_equal "Bearer upstream-token", sent.headers["authorization"]
    body = JSON.parse(sent.body)
    assert_equal true, body["stream"]
    assert body["model"].end_with?(name), "the upstream is asked for the served model, got #{body['model']}"
    assert_equal messages.map { |m| m.transform_keys(&:to_s) }, body["messages"]
  ensure
    @admin.set_feature("duo_chat", :FEATURE_PROVIDER_VENDORED)
  end

  def test_upstream_that_breaks_off_mid_stream_raises_unavailable
    _name, id = register_model(FakeOpenAIServer::BROKEN_SUFFIX)
    @admin.set_feature("code_generations", :FEATURE_PROVIDER_SELF_HOSTED, self_hosted_model_id: id)
    seen = []
    error = assert_raises(DuoRouting::UnavailableError) do
      @client.complete(user_id: 1, feature: "code_generations", messages: [{ role: "user", content: "def" }]) do |text|
        seen << text
      end
    end
    assert_equal DELTAS.first(2), seen, "text that arrived before the break was passed on"
    assert_equal "UPSTREAM_STREAM_BROKEN", error.reason
  ensure
    @admin.set_feature("code_generations", :FEATURE_PROVIDER_VENDORED)
  end

  def test_breaking_out_of_the_block_stops_the_upstream
    _name, id = register_model(FakeOpenAIServer::ENDLESS_SUFFIX)
    @admin.set_feature("code_generations", :FEATURE_PROVIDER_SELF_HOSTED, self_hosted_model_id: id)

    messages = [{ role: "user", content: "go" }]
    first = @client.complete(user_id: 1, feature: "code_generations", messages: messages) { |text| break text }

    assert_equal "word0 ", first
    deadline = Time.now + 5
    sleep(0.05) while @upstream.outcomes.empty? && Time.now < deadline
    assert_equal [:disconnected], @upstream.outcomes, "the sidecar hangs up on the upstream when Rails cancels"
  ensure
    @admin.set_feature("code_generations", :FEATURE_PROVIDER_VENDORED)
  end
end
