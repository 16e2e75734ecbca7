//! AWS refusing the caller (IAM): the one line an operator needs, for any service.
//!
//! It lives here, in the lowest crate that talks to AWS, so the store, the workers' SQS client and the API's SNS and
//! SQS clients all say it the same way (`platform::aws` re-exports it).

// The smithy types every AWS SDK crate shares, through the one SDK this crate depends on.
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};

/// Codes AWS services answer when a policy does not allow the call.
const CODES: [&str; 5] =
    ["AccessDenied", "AccessDeniedException", "AuthorizationError", "AuthorizationErrorException", "AccessDeniedFault"];

/// A call AWS refused for lack of permission: which action, on what, to whom.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("AWS denied {action} on {resource} to {identity}: {message}")]
pub struct AccessDenied {
    /// The IAM action, e.g. `dynamodb:UpdateItem`.
    pub action: String,
    /// What the call was on: a table, queue or topic.
    pub resource: String,
    /// The caller's ARN as AWS names it in the message, or `an unnamed identity`.
    pub identity: String,
    /// The error code AWS answered (`AccessDeniedException`, `AuthorizationError`, ...).
    pub code: String,
    pub message: String,
}

impl AccessDenied {
    /// `Some` when `error` is AWS refusing the caller's permissions; `action` and `resource` are what the caller was
    /// doing (the response does not always say).
    pub fn from_sdk<E: ProvideErrorMetadata>(
        error: &SdkError<E, HttpResponse>,
        action: &str,
        resource: &str,
    ) -> Option<Self> {
        let SdkError::ServiceError(failure) = error else { return None };
        let raw = failure.raw();
        let body = raw.body().bytes().map(String::from_utf8_lossy).unwrap_or_default();
        // An error body the client could not parse (an emulator answering XML to a JSON client) still names it.
        let code = failure.err().code().map(str::to_owned).or_else(|| between(&body, "<Code>", "</Code>"))?;
        if !CODES.contains(&code.as_str()) {
            return None;
        }
        let message = failure
            .err()
            .message()
            .map(str::to_owned)
            .or_else(|| between(&body, "<Message>", "</Message>"))
            .unwrap_or_else(|| format!("HTTP {}", raw.status().as_u16()));
        let identity =
            between(&message, "User: ", " is not authorized").unwrap_or_else(|| "an unnamed identity".into());
        Some(Self { action: action.to_owned(), resource: resource.to_owned(), identity, code, message })
    }
}

/// The IAM action of an SDK operation: `("sqs", "delete_message_batch")` -> `sqs:DeleteMessage` (AWS authorises a
/// batch call as its single action).
pub fn iam_action(service: &str, operation: &str) -> String {
    let single = operation.strip_suffix("_batch").unwrap_or(operation);
    let pascal: String = single
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map(|first| first.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect();
    format!("{service}:{pascal}")
}

fn between(text: &str, start: &str, end: &str) -> Option<String> {
    let (_, rest) = text.split_once(start)?;
    let (value, _) = rest.split_once(end)?;
    Some(value.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use aws_smithy_runtime_api::http::{Response, StatusCode};
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    use super::*;

    fn failure(status: u16, meta: ErrorMetadata, body: &'static str) -> SdkError<ErrorMetadata, HttpResponse> {
        let status = StatusCode::try_from(status).unwrap_or_else(|e| panic!("{e}"));
        SdkError::service_error(meta, Response::new(status, SdkBody::from(body)))
    }

    #[test]
    fn names_action_resource_and_identity() {
        let message = "User: arn:aws:sts::123456789012:assumed-role/Worker/task is not authorized to perform: \
                       dynamodb:UpdateItem on resource: arn:aws:dynamodb:eu-west-1:123456789012:table/orders";
        let meta = ErrorMetadata::builder().code("AccessDeniedException").message(message).build();
        let denied = AccessDenied::from_sdk(&failure(400, meta, ""), "dynamodb:UpdateItem", "table orders");
        let denied = denied.unwrap_or_else(|| panic!("not recognised"));
        assert_eq!(denied.identity, "arn:aws:sts::123456789012:assumed-role/Worker/task");
        assert!(denied.to_string().starts_with(
            "AWS denied dynamodb:UpdateItem on table orders to arn:aws:sts::123456789012:assumed-role/Worker/task: User:"
        ));
    }

    #[test]
    fn reads_an_unparsed_xml_body() {
        let body = "<ErrorResponse><Errors><Error><Code>AccessDenied</Code><Message>User: arn:aws:iam::1:user/w \
                    is not authorized to perform: sqs:ReceiveMessage</Message></Error></Errors></ErrorResponse>";
        let denied =
            AccessDenied::from_sdk(&failure(403, ErrorMetadata::builder().build(), body), "sqs:ReceiveMessage", "q");
        assert_eq!(denied.map(|d| d.identity), Some("arn:aws:iam::1:user/w".to_owned()));
    }

    #[test]
    fn iam_actions_are_named_as_policies_name_them() {
        assert_eq!(iam_action("sqs", "change_message_visibility_batch"), "sqs:ChangeMessageVisibility");
        assert_eq!(iam_action("sqs", "list_dead_letter_source_queues"), "sqs:ListDeadLetterSourceQueues");
        assert_eq!(iam_action("sns", "publish"), "sns:Publish");
    }

    #[test]
    fn other_failures_are_not_denials() {
        let throttled = ErrorMetadata::builder().code("ThrottlingException").build();
        assert_eq!(AccessDenied::from_sdk(&failure(400, throttled, ""), "a", "b"), None);
        let signature = "<Error><Code>SignatureDoesNotMatch</Code></Error>";
        assert_eq!(AccessDenied::from_sdk(&failure(403, ErrorMetadata::builder().build(), signature), "a", "b"), None);
    }
}
