# frozen_string_literal: true

require "grpc"
require "gitlab/duo/routing/v1/routing_services_pb"
require "duo_routing/errors"
require "duo_routing/token"
require "duo_routing/completion"

module DuoRouting
  # RoutingService client for GitLab Rails. Thread-safe: build one per process and share it.
  #
  #   client = DuoRouting::Client.new(address: "127.0.0.1:50051", secret: File.read(path).strip)
  #   route = client.resolve_model(user_id: 1, feature: "duo_chat", root_namespace_id: 10)
  #   client.complete(user_id: 1, feature: "duo_chat", messages: [{ role: "user", content: "Hi" }]) { |t| print t }
  class Client
    V1 = Gitlab::Duo::Routing::V1

    # ResolveModel answers from memory: if it takes longer than this, the sidecar is in trouble, and Rails
    # should fail the Duo request rather than hold a Puma thread.
    DEFAULT_RESOLVE_TIMEOUT = 1.0
    # A whole streamed completion, first byte to last.
    DEFAULT_COMPLETE_TIMEOUT = 120.0
    # Pause before the one ResolveModel retry: long enough for a dropped connection to be re-established.
    RETRY_DELAY = 0.05

    attr_reader :address, :resolve_timeout, :complete_timeout

    # address: "host:port" of the sidecar.
    # secret: the RoutingService client secret (String), or nil to send no authorization header
    #   (only for sidecars that run with authentication off).
    # tls: false (plaintext, the sidecar next to Rails on loopback), true (TLS, system CA roots), or a
    #   GRPC::Core::ChannelCredentials for a private CA or mTLS.
    # clock: returns the Time that tokens are signed with (tests pass a skewed one); deadlines use Time.now.
    def initialize(address:, secret:, tls: false, resolve_timeout: DEFAULT_RESOLVE_TIMEOUT,
                   complete_timeout: DEFAULT_COMPLETE_TIMEOUT, channel_args: {}, clock: -> { Time.now })
      @address = address
      @secret = validated_secret(secret)
      @credentials = credentials_for(tls)
      @resolve_timeout = positive(resolve_timeout, "resolve_timeout")
      @complete_timeout = positive(complete_timeout, "complete_timeout")
      @channel_args = channel_args
      @clock = clock
      @lock = Mutex.new
    end

    # Which model serves feature for user_id. root_namespace_id is the top-level group of the resource the
    # request is about (nil or 0: none). user_selected_model is the model the user picked in the model picker
    # (nil or "": none): it never makes the request fail, and the answer's user_selection says whether it was
    # used (:USER_SELECTION_APPLIED, source :SELECTION_SOURCE_USER) or why not (:USER_SELECTION_IGNORED_*).
    # Returns a Gitlab::Duo::Routing::V1::ResolveModelResponse.
    # Retried once on UNAVAILABLE (ResolveModel has no side effects), within the same deadline.
    def resolve_model(user_id:, feature:, root_namespace_id: nil, user_selected_model: nil, timeout: resolve_timeout)
      request = V1::ResolveModelRequest.new(user_id: user_id, feature: feature,
                                            root_namespace_id: root_namespace_id || 0,
                                            user_selected_model: user_selected_model.to_s)
      call_with_one_retry(:resolve_model, request, timeout)
    end

    # What the model picker shows the user for feature (GitLab's aiChatAvailableModels): default_model, the
    # selectable_models the user may choose (identifier, name, provider, cost_indicator), a hard pinned_model,
    # user_may_choose, and on GitLab.com the governing namespace or, for a multi-seat user without a default
    # namespace, candidate_namespace_ids. Returns a Gitlab::Duo::Routing::V1::ListUserSelectableModelsResponse.
    # Retried once on UNAVAILABLE, like resolve_model.
    def list_user_selectable_models(user_id:, feature:, root_namespace_id: nil, timeout: resolve_timeout)
      request = V1::ListUserSelectableModelsRequest.new(user_id: user_id, feature: feature,
                                                        root_namespace_id: root_namespace_id || 0)
      call_with_one_retry(:list_user_selectable_models, request, timeout)
    end

    # Routes like resolve_model and streams the completion from the chosen model, yielding each text delta
    # (a String) to the block as it arrives. Returns a DuoRouting::Completion (route, text, finish_reason,
    # input_tokens, output_tokens, usage_estimated).
    # messages: [{ role: "system" | "user" | "assistant", content: String }, ...] or V1::ChatMessage objects.
    # Never retried: the model may already have produced text. Breaking out of the block cancels the call.
    # user_selected_model: as in resolve_model; the completion's route says what became of it.
    def complete(user_id:, feature:, messages:, root_namespace_id: nil, max_tokens: nil, temperature: nil,
                 stop_sequences: [], correlation_id: nil, user_selected_model: nil, timeout: complete_timeout,
                 &on_text)
      request = V1::CompleteRequest.new(
        user_id: user_id, feature: feature, root_namespace_id: root_namespace_id || 0,
        messages: messages.map { |m| chat_message(m) }, correlation_id: correlation_id.to_s,
        parameters: generation_parameters(max_tokens, temperature, stop_sequences),
        user_selected_model: user_selected_model.to_s
      )
      stream_completion(request, positive(timeout, "timeout"), CompletionReader.new(on_text))
    end

    # Closes the channel; the next call opens a new one.
    def close
      @lock.synchronize do
        @channel&.close
        @channel = @stub = nil
      end
    end

    private

    # Tokens have one-second resolution, so one is signed per second and shared (HMAC costs ~40 us in Ruby).
    def call_metadata
      return {} unless @secret

      second = @clock.call.to_i
      cached = @token
      return cached.last if cached&.first == second

      metadata = { "authorization" => Token.authorization(@secret, time: Time.at(second)) }.freeze
      @token = [second, metadata].freeze
      metadata
    end

    # A call without side effects, retried once on UNAVAILABLE within the same deadline.
    def call_with_one_retry(method, request, timeout)
      deadline = Time.now + positive(timeout, "timeout")
      attempt = 1
      begin
        stub.public_send(method, request, deadline: deadline, metadata: call_metadata)
      rescue GRPC::Unavailable => e
        raise ErrorMapper.from_grpc(e, address: address, timeout: timeout) unless attempt == 1 && retry_fits?(deadline)

        attempt += 1
        sleep(RETRY_DELAY)
        retry
      rescue GRPC::BadStatus => e
        raise ErrorMapper.from_grpc(e, address: address, timeout: timeout)
      end
    end

    def retry_fits?(deadline)
      Time.now + RETRY_DELAY < deadline
    end

    # The channel is opened on first use, so a client built before Puma or Sidekiq forks holds none, and a
    # forked child opens its own rather than reuse its parent's (gRPC channels do not survive a fork).
    def stub
      @lock.synchronize do
        if @stub.nil? || @pid != Process.pid
          @pid = Process.pid
          @channel = GRPC::Core::Channel.new(address, @channel_args, @credentials)
          @stub = V1::RoutingService::Stub.new(address, :this_channel_is_insecure, channel_override: @channel)
        end
        @stub
      end
    end

    def stream_completion(request, timeout, reader)
      operation = stub.complete(request, deadline: Time.now + timeout, metadata: call_metadata, return_op: true)
      completion = nil
      begin
        operation.execute.each { |event| reader.add(event) }
        completion = reader.result
      rescue GRPC::BadStatus => e
        raise ErrorMapper.from_grpc(e, address: address, timeout: timeout)
      ensure
        # Reached on break, an exception in the block or a malformed stream too: cancelling tells the sidecar to
        # stop the upstream from generating for nobody.
        operation.cancel unless completion
      end
    end

    def generation_parameters(max_tokens, temperature, stop_sequences)
      parameters = V1::GenerationParameters.new(max_tokens: max_tokens || 0, stop_sequences: stop_sequences)
      parameters.temperature = temperature unless temperature.nil? # proto3 optional: unset lets the model decide
      parameters
    end

    def chat_message(message)
      return message if message.is_a?(V1::ChatMessage)

      V1::ChatMessage.new(role: (message[:role] || message["role"]).to_s,
                          content: (message[:content] || message["content"]).to_s)
    end

    def credentials_for(tls)
      case tls
      when false, nil then :this_channel_is_insecure
      when true then GRPC::Core::ChannelCredentials.new
      when GRPC::Core::ChannelCredentials then tls
      else raise ArgumentError, "tls must be true, false or a GRPC::Core::ChannelCredentials"
      end
    end

    def validated_secret(secret)
      return secret if secret.nil? || (secret.is_a?(String) && !secret.empty?)

      raise ArgumentError, "secret must be a non-empty String, or nil to send no token"
    end

    def positive(seconds, name)
      raise ArgumentError, "#{name} must be a positive number of seconds, got #{seconds.inspect}" unless
        seconds.is_a?(Numeric) && seconds.positive?

      seconds
    end
  end

  # Checks the order of a completion stream (route, deltas, one finished) while passing text on.
  class CompletionReader
    def initialize(on_text)
      @on_text = on_text
      @route = nil
      @text = +""
      @finished = nil
    end

    def add(event)
      case event.event
      when :route then on_route(event.route)
      when :delta then on_delta(event.delta.text)
      when :finished then on_finished(event.finished)
      else violation("an event of unknown kind #{event.event.inspect}")
      end
    end

    def finished?
      !@finished.nil?
    end

    def result
      violation("the stream ended without the final event") unless finished?

      usage = @finished.usage || Gitlab::Duo::Routing::V1::TokenUsage.new
      Completion.new(route: @route, text: @text.freeze, finish_reason: @finished.finish_reason,
                     input_tokens: usage.input_tokens, output_tokens: usage.output_tokens,
                     usage_estimated: usage.estimated)
    end

    private

    def on_route(route)
      violation("a second route") if @route

      @route = route
    end

    def on_delta(text)
      expect_open("a text delta")
      @text << text
      @on_text&.call(text)
    end

    def on_finished(finished)
      expect_open("the final event")
      @finished = finished
    end

    def expect_open(what)
      violation("#{what} before the route") unless @route
      violation("#{what} after the final event") if finished?
    end

    def violation(what)
      raise ProtocolError.new("the sidecar's completion stream is malformed: #{what}", code: :INTERNAL)
    end
  end

  private_constant :CompletionReader
end
