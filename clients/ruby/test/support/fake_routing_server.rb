# frozen_string_literal: true

require "grpc"
require "gitlab/duo/routing/v1/routing_services_pb"
require "google/rpc/status_pb"
require "google/rpc/error_details_pb"

# An in-process RoutingService whose answers each test scripts, to check what the client itself does
# (metadata, deadlines, retries, stream checks) in cases a healthy sidecar never produces.
class FakeRoutingServer
  V1 = Gitlab::Duo::Routing::V1

  # What the server saw of one call.
  Call = Struct.new(:rpc, :request, :metadata, :deadline, keyword_init: true)

  attr_reader :address

  # resolve: ->(request, attempt) { response or raise GRPC::BadStatus }
  # complete: ->(request) { Enumerable of CompleteResponse }
  def initialize(resolve: nil, complete: nil)
    @resolve = resolve
    @complete = complete
    @calls = []
    @lock = Mutex.new
    @server = GRPC::RpcServer.new(pool_size: 4)
    @address = "127.0.0.1:#{@server.add_http2_port('127.0.0.1:0', :this_port_is_insecure)}"
    @server.handle(service)
    @thread = Thread.new { @server.run }
    @server.wait_till_running(5) || raise("fake RoutingService did not start")
  end

  def stop
    @server.stop
    @thread.join(5)
  end

  def calls
    @lock.synchronize { @calls.dup }
  end

  # A GRPC::BadStatus carrying google.rpc.Status details, as the sidecar sends them.
  def self.status_error(code, message, reason:, metadata: {})
    info = Google::Rpc::ErrorInfo.new(reason: reason, domain: "routing.duo.gitlab.com", metadata: metadata)
    status = Google::Rpc::Status.new(code: code, message: message,
                                     details: [Google::Protobuf::Any.pack(info)])
    GRPC::BadStatus.new_status_exception(code, message,
                                         { "grpc-status-details-bin" => Google::Rpc::Status.encode(status) })
  end

  private

  def service
    fake = self
    Class.new(V1::RoutingService::Service) do
      define_method(:resolve_model) { |request, call| fake.send(:on_resolve, request, call) }
      define_method(:complete) { |request, call| fake.send(:on_complete, request, call) }
    end.new
  end

  def on_resolve(request, call)
    attempt = record(:resolve_model, request, call)
    @resolve.call(request, attempt)
  end

  def on_complete(request, call)
    record(:complete, request, call)
    @complete.call(request)
  end

  # Returns how many calls the server has seen, this one included.
  def record(rpc, request, call)
    seen = Call.new(rpc: rpc, request: request, metadata: call.metadata.dup, deadline: call.deadline)
    @lock.synchronize { (@calls << seen).size }
  end
end
