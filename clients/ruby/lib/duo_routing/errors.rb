# frozen_string_literal: true

require "grpc"
require "google/protobuf/well_known_types"
require "google/rpc/status_pb"
require "google/rpc/error_details_pb"

module DuoRouting
  # The google.rpc.ErrorInfo domain of every error the sidecar raises on purpose.
  ERROR_DOMAIN = "routing.duo.gitlab.com"

  FieldViolation = Struct.new(:field, :description, keyword_init: true)
  PreconditionViolation = Struct.new(:type, :subject, :description, keyword_init: true)

  # A failed call. #message is the sidecar's text (meant for people); #code is the gRPC status name
  # (:FAILED_PRECONDITION, ...); #reason, #domain and #metadata come from google.rpc.ErrorInfo and are what
  # code should branch on. Errors raised by gRPC itself (sidecar unreachable, deadline) have an empty reason.
  class Error < StandardError
    attr_reader :code, :reason, :domain, :metadata, :field_violations, :precondition_violations

    def initialize(message, code: :UNKNOWN, reason: "", domain: "", metadata: {}, field_violations: [],
                   precondition_violations: [])
      super(message)
      @code = code
      @reason = reason
      @domain = domain
      @metadata = metadata.dup.freeze
      @field_violations = field_violations.dup.freeze
      @precondition_violations = precondition_violations.dup.freeze
    end
  end

  class InvalidArgumentError < Error; end
  class NotFoundError < Error; end
  class AlreadyExistsError < Error; end
  class FailedPreconditionError < Error; end
  class UnauthenticatedError < Error; end
  class PermissionDeniedError < Error; end
  class ResourceExhaustedError < Error; end
  class UnavailableError < Error; end
  class DeadlineExceededError < Error; end
  class UnimplementedError < Error; end
  class CancelledError < Error; end
  # UNKNOWN, INTERNAL and DATA_LOSS: a bug in the sidecar, never the caller's fault.
  class InternalError < Error; end
  # The sidecar answered but broke the contract (for example a completion stream without its final event).
  class ProtocolError < Error; end

  # GitLab.com: a user with seats in several top-level namespaces, and no default namespace, made a request
  # without context whose model depends on the namespace. #message is GitLab's user-facing text; show it, and
  # show the banner that links to Preferences > Behavior > Default GitLab Duo namespace.
  class DefaultNamespaceRequiredError < FailedPreconditionError
    REASON = "DEFAULT_NAMESPACE_REQUIRED"

    # The namespaces the user can choose from, as integers.
    def candidate_namespace_ids
      metadata.fetch("candidate_namespace_ids", "").split(",").map { |id| Integer(id, 10) }
    end

    def user_id
      Integer(metadata.fetch("user_id"), 10)
    end

    def feature
      metadata.fetch("feature")
    end
  end

  # Self-Managed with its own AI Gateway (hybrid) or an offline license: nothing serves the feature, because the
  # instance has no GitLab-managed default (or reaches no GitLab-managed model) and the admin assigned no
  # self-hosted model. #message tells the admin what to do; treat the feature as unavailable until then.
  class NoModelConfiguredError < FailedPreconditionError
    REASON = "NO_MODEL_CONFIGURED"

    def feature
      metadata.fetch("feature")
    end

    # "self_hosted_ai_gateway" or "offline_license": why there is no GitLab-managed model to fall back on.
    def cause
      metadata.fetch("cause")
    end

    # The stored instance pin that cannot be used, or nil.
    def pinned_model
      metadata["pinned_model"]
    end
  end

  # Builds DuoRouting errors from GRPC::BadStatus, decoding the google.rpc.Status details the sidecar sends
  # in the grpc-status-details-bin trailer.
  module ErrorMapper
    CODE_NAMES = GRPC::Core::StatusCodes.constants.to_h { |name| [GRPC::Core::StatusCodes.const_get(name), name] }
                                        .freeze

    CLASSES = {
      INVALID_ARGUMENT: InvalidArgumentError,
      OUT_OF_RANGE: InvalidArgumentError,
      NOT_FOUND: NotFoundError,
      ALREADY_EXISTS: AlreadyExistsError,
      FAILED_PRECONDITION: FailedPreconditionError,
      ABORTED: FailedPreconditionError,
      UNAUTHENTICATED: UnauthenticatedError,
      PERMISSION_DENIED: PermissionDeniedError,
      RESOURCE_EXHAUSTED: ResourceExhaustedError,
      UNAVAILABLE: UnavailableError,
      DEADLINE_EXCEEDED: DeadlineExceededError,
      UNIMPLEMENTED: UnimplementedError,
      CANCELLED: CancelledError,
      UNKNOWN: InternalError,
      INTERNAL: InternalError,
      DATA_LOSS: InternalError
    }.freeze

    module_function

    # address and timeout only improve the text of errors that gRPC raised on our side.
    def from_grpc(error, address: nil, timeout: nil)
      code = CODE_NAMES.fetch(error.code, :UNKNOWN)
      status = rpc_status(error)
      attributes = { code: code }.merge(decode_details(status))
      message = status && !status.message.empty? ? status.message : error.details.to_s
      message = local_message(code, message, address, timeout) if attributes[:reason].to_s.empty?
      error_class(code, attributes[:reason]).new(message, **attributes)
    end

    # FAILED_PRECONDITION reasons that Rails handles on their own.
    PRECONDITION_CLASSES = {
      DefaultNamespaceRequiredError::REASON => DefaultNamespaceRequiredError,
      NoModelConfiguredError::REASON => NoModelConfiguredError
    }.freeze

    def error_class(code, reason)
      return PRECONDITION_CLASSES.fetch(reason, FailedPreconditionError) if code == :FAILED_PRECONDITION

      CLASSES.fetch(code, Error)
    end

    def rpc_status(error)
      status = error.to_rpc_status
      # A trailer that disagrees with the status line is not trusted; the status line wins.
      status if status && status.code == error.code
    rescue StandardError
      nil
    end

    def decode_details(status)
      details = status ? status.details.to_a : []
      error_info(unpack(details, Google::Rpc::ErrorInfo).first).merge(
        field_violations: unpack(details, Google::Rpc::BadRequest).flat_map(&:field_violations).map do |v|
          FieldViolation.new(field: v.field, description: v.description)
        end,
        precondition_violations: unpack(details, Google::Rpc::PreconditionFailure).flat_map(&:violations).map do |v|
          PreconditionViolation.new(type: v.type, subject: v.subject, description: v.description)
        end
      )
    end

    def error_info(info)
      return { reason: "", domain: "", metadata: {} } unless info

      { reason: info.reason, domain: info.domain, metadata: info.metadata.to_h }
    end

    # The details of one type; Any#unpack answers nil for the others.
    def unpack(details, type)
      details.filter_map { |any| any.unpack(type) }
    end

    # Without an ErrorInfo the sidecar did not raise the error itself: say what went wrong on the way.
    def local_message(code, message, address, timeout)
      return message unless address

      case code
      when :UNAVAILABLE then "cannot reach the Duo routing sidecar at #{address} (#{message})"
      when :DEADLINE_EXCEEDED then "the Duo routing sidecar at #{address} did not answer within #{timeout} s"
      else message
      end
    end
  end
end
