# frozen_string_literal: true

require "test_helper"
require "support/fake_routing_server"

# What DuoRouting::Client does on its own, against a scripted in-process RoutingService: tokens, deadlines,
# the single ResolveModel retry, error mapping and the completion stream's order.
class ClientTest < Minitest::Test
  V1 = Gitlab::Duo::Routing::V1
  Codes = GRPC::Core::StatusCodes
  ROUTE = V1::ResolveModelResponse.new(provider: :PROVIDER_GITLAB_AI_GATEWAY, model_identifier: "m",
                                       source: :SELECTION_SOURCE_GITLAB_DEFAULT, gitlab_default: true)

  def teardown
    @client&.close
    @server&.stop
  end

  def start(secret: nil, **client_options, &resolve)
    @server = FakeRoutingServer.new(resolve: resolve || ->(*) { ROUTE }, complete: client_options.delete(:complete))
    @client = DuoRouting::Client.new(address: @server.address, secret: secret, **client_options)
  end

  # -- tokens --------------------------------------------------------------------------------------

  def test_token_is_gitaly_v2_hmac_of_the_unix_timestamp
    # Reference value computed with Python's hmac module: the sidecar must accept what this client signs.
    assert_equal "v2.4b227f8831b3763d066901751ad4c583ed08832bf1924a4ec50c2e871b1e8586.1700000000",
                 DuoRouting::Token.sign("secret", time: Time.at(1_700_000_000))
    assert_equal "Bearer v2.", DuoRouting::Token.authorization("secret")[0, 10]
  end

  def test_every_call_carries_a_freshly_signed_bearer_token
    now = Time.at(1_700_000_000)
    start(secret: "shared-secret", clock: -> { now })
    @client.resolve_model(user_id: 1, feature: "duo_chat")
    now += 5
    @client.resolve_model(user_id: 1, feature: "duo_chat")

    tokens = @server.calls.map { |call| call.metadata.fetch("authorization") }
    assert_equal [DuoRouting::Token.authorization("shared-secret", time: Time.at(1_700_000_000)),
                  DuoRouting::Token.authorization("shared-secret", time: Time.at(1_700_000_005))], tokens
  end

  def test_no_secret_sends_no_authorization_header
    start(secret: nil)
    @client.resolve_model(user_id: 1, feature: "duo_chat")
    refute @server.calls.first.metadata.key?("authorization")
  end

  def test_empty_secret_is_refused_at_construction
    assert_raises(ArgumentError) { DuoRouting::Client.new(address: "127.0.0.1:1", secret: "") }
  end

  # -- deadlines -----------------------------------------------------------------------------------

  def test_every_call_has_a_deadline_defaulting_to_one_second_for_resolve_model
    start
    @client.resolve_model(user_id: 1, feature: "duo_chat")
    @client.resolve_model(user_id: 1, feature: "duo_chat", timeout: 7)
    sent_at = Time.now

    first, second = @server.calls.map(&:deadline)
    assert_in_delta sent_at + 1, first, 0.5
    assert_in_delta sent_at + 7, second, 0.5
  end

  def test_a_slow_sidecar_raises_deadline_exceeded_within_the_timeout
    start(resolve_timeout: 0.1) { sleep(1.0) && ROUTE }
    started = Time.now
    error = assert_raises(DuoRouting::DeadlineExceededError) { @client.resolve_model(user_id: 1, feature: "duo_chat") }
    assert_operator Time.now - started, :<, 0.8
    assert_match(/did not answer within 0.1 s/, error.message)
    assert_equal 1, @server.calls.size, "DEADLINE_EXCEEDED is not retried: the budget is spent"
  end

  # -- retry ---------------------------------------------------------------------------------------

  def test_resolve_model_is_retried_once_on_unavailable
    start do |_request, attempt|
      raise GRPC::Unavailable, "sidecar restarting" if attempt == 1

      ROUTE
    end
    assert_equal "m", @client.resolve_model(user_id: 1, feature: "duo_chat").model_identifier
    assert_equal 2, @server.calls.size
  end

  def test_resolve_model_gives_up_after_the_second_unavailable
    start { raise GRPC::Unavailable, "still down" }
    error = assert_raises(DuoRouting::UnavailableError) { @client.resolve_model(user_id: 1, feature: "duo_chat") }
    assert_equal 2, @server.calls.size
    assert_equal :UNAVAILABLE, error.code
  end

  def test_other_errors_are_not_retried_and_keep_their_details
    start do
      raise FakeRoutingServer.status_error(Codes::INVALID_ARGUMENT, "unknown feature 'x'",
                                           reason: "UNKNOWN_FEATURE", metadata: { "field" => "feature" })
    end
    error = assert_raises(DuoRouting::InvalidArgumentError) { @client.resolve_model(user_id: 1, feature: "x") }
    assert_equal 1, @server.calls.size
    assert_equal "unknown feature 'x'", error.message
    assert_equal "UNKNOWN_FEATURE", error.reason
    assert_equal({ "field" => "feature" }, error.metadata)
  end

  def test_unreachable_sidecar_raises_unavailable_within_the_deadline
    port = TCPServer.open("127.0.0.1", 0) { |s| s.addr[1] } # bound then released: nothing listens there
    @client = DuoRouting::Client.new(address: "127.0.0.1:#{port}", secret: nil)
    started = Time.now
    error = assert_raises(DuoRouting::UnavailableError) { @client.resolve_model(user_id: 1, feature: "duo_chat") }
    assert_operator Time.now - started, :<, 1.5
    assert_match(/cannot reach the Duo routing sidecar at 127.0.0.1:#{port}/, error.message)
    assert_empty error.reason
  end

  # -- error mapping -------------------------------------------------------------------------------

  def test_status_codes_map_to_error_classes
    {
      Codes::PERMISSION_DENIED => DuoRouting::PermissionDeniedError,
      Codes::UNAUTHENTICATED => DuoRouting::UnauthenticatedError,
      Codes::RESOURCE_EXHAUSTED => DuoRouting::ResourceExhaustedError,
      Codes::NOT_FOUND => DuoRouting::NotFoundError,
      Codes::FAILED_PRECONDITION => DuoRouting::FailedPreconditionError,
      Codes::INTERNAL => DuoRouting::InternalError
    }.each do |code, error_class|
      error = DuoRouting::ErrorMapper.from_grpc(FakeRoutingServer.status_error(code, "no", reason: "SOME_REASON"))
      assert_instance_of error_class, error
      assert_kind_of DuoRouting::Error, error
      assert_equal "SOME_REASON", error.reason
    end
  end

  def test_default_namespace_required_needs_its_reason_not_just_the_code
    other = FakeRoutingServer.status_error(Codes::FAILED_PRECONDITION, "no seat", reason: "NO_SEAT_IN_NAMESPACE")
    assert_instance_of DuoRouting::FailedPreconditionError, DuoRouting::ErrorMapper.from_grpc(other)

    metadata = { "candidate_namespace_ids" => "10,20", "user_id" => "7", "feature" => "duo_chat" }
    required = FakeRoutingServer.status_error(Codes::FAILED_PRECONDITION, "choose one",
                                              reason: "DEFAULT_NAMESPACE_REQUIRED", metadata: metadata)
    error = DuoRouting::ErrorMapper.from_grpc(required)
    assert_instance_of DuoRouting::DefaultNamespaceRequiredError, error
    assert_equal [[10, 20], 7, "duo_chat"], [error.candidate_namespace_ids, error.user_id, error.feature]
  end

  # -- completion stream ---------------------------------------------------------------------------

  def event(**kind)
    V1::CompleteResponse.new(**kind)
  end

  def finished(reason = "stop", input = 3, output = 2)
    event(finished: V1::CompletionFinished.new(finish_reason: reason,
                                               usage: V1::TokenUsage.new(input_tokens: input, output_tokens: output)))
  end

  def test_complete_yields_deltas_and_returns_the_final_event
    events = [event(route: ROUTE), event(delta: V1::TextDelta.new(text: "Hel")),
              event(delta: V1::TextDelta.new(text: "lo")), finished("length", 11, 2)]
    start(complete: ->(_request) { events })
    seen = []
    result = @client.complete(user_id: 1, feature: "duo_chat", messages: [{ role: "user", content: "Hi" }],
                              max_tokens: 2, temperature: 0.5, stop_sequences: ["\n"], correlation_id: "c-1") do |text|
      seen << text
    end

    assert_equal %w[Hel lo], seen
    assert_equal ["Hello", "length", 11, 2, false],
                 [result.text, result.finish_reason, result.input_tokens, result.output_tokens, result.usage_estimated]
    assert_equal ROUTE, result.route
    request = @server.calls.first.request
    assert_equal([%w[user Hi]], request.messages.map { |m| [m.role, m.content] })
    assert_equal [2, 0.5, ["\n"]], [request.parameters.max_tokens, request.parameters.temperature,
                                    request.parameters.stop_sequences.to_a]
    assert_equal "c-1", request.correlation_id
    assert_in_delta Time.now + 120, @server.calls.first.deadline, 2
  end

  def test_complete_refuses_a_stream_that_breaks_the_contract
    broken = {
      "no final event" => [event(route: ROUTE), event(delta: V1::TextDelta.new(text: "x"))],
      "delta before the route" => [event(delta: V1::TextDelta.new(text: "x")), finished],
      "event after the final one" => [event(route: ROUTE), finished, event(delta: V1::TextDelta.new(text: "x"))]
    }
    broken.each do |name, events|
      start(complete: ->(_request) { events })
      assert_raises(DuoRouting::ProtocolError, name) do
        @client.complete(user_id: 1, feature: "duo_chat", messages: [{ role: "user", content: "Hi" }])
      end
      teardown
    end
  end

  def test_breaking_out_of_the_block_cancels_the_stream
    endless = Enumerator.new do |out|
      out << event(route: ROUTE)
      loop { (out << event(delta: V1::TextDelta.new(text: "more "))) && sleep(0.01) }
    end
    start(complete: ->(_request) { endless })
    first = @client.complete(user_id: 1, feature: "duo_chat", messages: [{ role: "user", content: "Hi" }]) do |text|
      break text
    end
    assert_equal "more ", first
    # The client stays usable after a cancelled stream.
    assert_equal "m", @client.resolve_model(user_id: 1, feature: "duo_chat").model_identifier
  end
end
